// Junction scan in CUDA C++ (docs/design.md §1-§2): the same contract as csrc/cpu/junction_scan.h,
// a cross-check of the Triton kernel. Framework-free: raw pointers, sizes, a row stride, a stream.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace sia {

enum class CudaScanDType : int { f32 = 0, bf16 = 1, f16 = 2 };

// Bytes of device scratch junction_scan_cuda needs for these sizes.
size_t junction_scan_cuda_workspace_bytes(int64_t B, int64_t V, int64_t k);

// Two launches on `stream` (plus a 4-byte memset), no host sync, CUDA-graph safe:
//   1. grid = B x S CTAs (S vocabulary slices per row, about 512 CTAs in all): each streams its
//      slice once with 16-byte loads and leaves its partial (m, d, s), its top-kk candidates
//      (threshold filter, then radix select on (value, -id)) and its Gumbel-max winner.
//   2. grid = B CTAs: merge a row's slices, sort its k candidates, write the row's outputs; the
//      last CTA to finish compacts the junction rows in row order.
// Every output is written at full size B (entries past J are zero). Sampling is Gumbel-max with
// key z + T g; the noise g of token t in row b comes from Philox4x32-10 with key *seed and counter
// (t / 2, b, 0, 0), two 32-bit words per token (the sampler spec shared with the cpp backend).
// Top-k and sampled tokens do not depend on S; the low bits of lse and entropy may (S follows B).
cudaError_t junction_scan_cuda(
    // inputs (device pointers)
    const void* logits,          // [B, V] f32 / bf16 / f16, row b at logits + b * row_stride (any
                                 // alignment of a whole element; unit-stride rows)
    const float* tau,            // [B]
    const float* temperature,    // [B] >= 0, 0 = greedy row
    const int64_t* seed,         // [1]
    // outputs (device pointers, preallocated at full size)
    float* entropy,              // [B]
    float* lse,                  // [B]; NaN for a NaN row, +inf for +inf, -inf if no finite logit
    bool* gate,                  // [B]
    int64_t* topk_ids,           // [B, k]
    float* topk_logprobs,        // [B, k]
    int64_t* base_token,         // [B]
    int64_t* junction_rows,      // [B]
    int32_t* num_junctions,      // [1]
    int64_t* junction_ids,       // [B, k]
    float* junction_logprobs,    // [B, k]
    // scratch
    void* workspace,             // junction_scan_cuda_workspace_bytes(B, V, k) bytes
    // sizes and strides
    int64_t B,
    int64_t V,                   // < 2^31 - 2048
    int64_t row_stride,          // in elements
    int64_t k,                   // 1 <= k <= V
    // meta
    CudaScanDType dtype,
    bool entropy_topk,
    bool sample_topk,
    cudaStream_t stream);

}  // namespace sia
