// Junction scan on the CPU: one read of the logits [B, V] gives entropy, lse, the gate,
// the sorted top-k candidates, the base token and the compacted junction batch
// (docs/design.md §1-§2). Framework-free: raw pointers, sizes, a row stride.
#pragma once

#include <cstdint>

namespace sia {

enum class ScanDType : int { f32 = 0, bf16 = 1, f16 = 2 };

// Fills every output at full size B (entries past J = num_junctions[0] are zero).
// Results never depend on the thread count: the vocabulary is cut into fixed chunks whose
// partial (m, d, s) are folded in chunk order, top-k and Gumbel-max merges are exact, and
// the Gumbel noise of token t in row b is Philox4x32-10 keyed by (seed, b, t). Sampling takes
// argmax of z + T g (g <= 45.06, from 64 random bits); T == 0 is argmax of z (ties: lower id).
// Returns the number of OpenMP threads that ran (1 without OpenMP).
int junction_scan_cpu(
    // inputs
    const void* logits,          // [B, V] f32 / bf16 / f16, row b at logits + b * row_stride
    const float* tau,            // [B] gate threshold (may be +-inf)
    const float* temperature,    // [B] >= 0, 0 = greedy row
    // outputs (all preallocated at full size)
    float* entropy,              // [B]
    float* lse,                  // [B]; NaN if the row has a NaN, +inf for +inf, -inf if no finite logit
    bool* gate,                  // [B]
    int64_t* topk_ids,           // [B, k] sorted descending, ties to the lower id
    float* topk_logprobs,        // [B, k]
    int64_t* base_token,         // [B]
    int64_t* junction_rows,      // [B] first J valid, ascending
    int32_t* num_junctions,      // [1]
    int64_t* junction_ids,       // [B, k] first J rows valid
    float* junction_logprobs,    // [B, k] first J rows valid
    // sizes and strides
    int64_t B,
    int64_t V,
    int64_t row_stride,          // in elements, >= V
    int64_t k,                   // 1 <= k <= V
    // meta
    ScanDType dtype,
    bool entropy_topk,           // entropy of the top-k softmax (else the full row)
    bool sample_topk,            // Gumbel-max among the k candidates (else the full row)
    uint64_t seed,               // Philox key of the Gumbel noise (docs/design.md §2: sampler)
    int num_threads,             // at most this many (<= 0: OpenMP's default) ...
    int64_t min_work_per_thread);  // ... and at most B * V / this (<= 0: the measured crossover)

}  // namespace sia
