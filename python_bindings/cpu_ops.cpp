// torch op for the CPU junction scan in csrc/cpu (docs/design.md §2):
//   torch.ops.sia_kernels.junction_scan_cpu(logits, k, tau, temperature, entropy_topk, sample_topk,
//                                           seed, num_threads, min_work_per_thread) -> 10 tensors
// (JunctionScan order). tau and temperature: contiguous [B] f32 (sia_kernels.ops normalises them).
// Only light torch headers: the first-use build stays short.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <tuple>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "scan_outputs.h"
#include "../csrc/cpu/junction_scan.h"

namespace {

using at::Tensor;
using sia_bindings::ScanOutputs;

sia_bindings::ScanTuple junction_scan_cpu(const Tensor& logits, int64_t k, const Tensor& tau, const Tensor& temperature,
                                          bool entropy_topk, bool sample_topk, int64_t seed, int64_t num_threads,
                                          int64_t min_work_per_thread) {
  TORCH_CHECK(logits.device().is_cpu(), "junction_scan_cpu: logits must be on the CPU");
  TORCH_CHECK(logits.dim() == 2, "junction_scan_cpu: logits must be [B, V]");
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V >= 1 && (V == 1 || logits.stride(1) == 1), "junction_scan_cpu: logits rows must be unit-stride");
  TORCH_CHECK(logits.stride(0) >= 0, "junction_scan_cpu: row stride must be >= 0");  // 0: an expanded row
  TORCH_CHECK(1 <= k && k <= V, "junction_scan_cpu: need 1 <= k <= V");
  sia::ScanDType dt;
  switch (logits.scalar_type()) {
    case at::kFloat: dt = sia::ScanDType::f32; break;
    case at::kBFloat16: dt = sia::ScanDType::bf16; break;
    case at::kHalf: dt = sia::ScanDType::f16; break;
    default: TORCH_CHECK(false, "junction_scan_cpu: logits must be f32, bf16 or f16, got ", logits.scalar_type());
  }
  for (const Tensor* t : {&tau, &temperature}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 1 && t->size(0) == B &&
                    t->is_contiguous(),
                "junction_scan_cpu: tau and temperature must be contiguous [B] f32 CPU tensors");
  }
  ScanOutputs o(logits, k);
  if (B > 0) {
    sia::junction_scan_cpu(logits.data_ptr(), tau.data_ptr<float>(), temperature.data_ptr<float>(),
                           o.entropy.data_ptr<float>(), o.lse.data_ptr<float>(), o.gate.data_ptr<bool>(),
                           o.topk_ids.data_ptr<int64_t>(), o.topk_logprobs.data_ptr<float>(),
                           o.base_token.data_ptr<int64_t>(), o.junction_rows.data_ptr<int64_t>(),
                           o.num_junctions.data_ptr<int32_t>(), o.junction_ids.data_ptr<int64_t>(),
                           o.junction_logprobs.data_ptr<float>(), B, V, logits.stride(0), k, dt,
                           entropy_topk, sample_topk, static_cast<uint64_t>(seed), static_cast<int>(num_threads),
                           min_work_per_thread);
  } else {
    o.num_junctions.zero_();
  }
  return o.tuple();
}

// How many OpenMP threads a parallel region of this library gets when asked for n (<= 0: default).
int64_t cpu_omp_threads(int64_t n) {
  int got = 1;
#ifdef _OPENMP
  if (n > 0) {
#pragma omp parallel num_threads(static_cast<int>(n))
#pragma omp single
    got = omp_get_num_threads();
  } else {
#pragma omp parallel
#pragma omp single
    got = omp_get_num_threads();
  }
#endif
  return got;
}

}  // namespace

// FRAGMENT: the CUDA op (a separate library) adds to the same namespace.
TORCH_LIBRARY_FRAGMENT(sia_kernels, m) {
  m.def(
      "junction_scan_cpu(Tensor logits, int k, Tensor tau, Tensor temperature, bool entropy_topk, "
      "bool sample_topk, int seed, int num_threads, int min_work_per_thread) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("cpu_omp_threads(int n) -> int");
}

TORCH_LIBRARY_IMPL(sia_kernels, CPU, m) { m.impl("junction_scan_cpu", &junction_scan_cpu); }

TORCH_LIBRARY_IMPL(sia_kernels, CompositeExplicitAutograd, m) { m.impl("cpu_omp_threads", &cpu_omp_threads); }
