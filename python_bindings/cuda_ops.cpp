// torch op for the CUDA junction scan in csrc/cuda (docs/design.md §2):
//   torch.ops.sia_kernels.junction_scan_cuda(logits, k, tau, temperature, entropy_topk, sample_topk,
//                                            seed [1] i64 on the device) -> 10 tensors (JunctionScan order)
// Runs on the current stream with no host sync (two launches and a 4-byte memset; CUDA-graph safe).
// tau and temperature: contiguous [B] f32 (sia_kernels.ops normalises them). Bad arguments raise
// ValueError / TypeError in Python (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <tuple>

#include "scan_outputs.h"
#include "../csrc/cuda/junction_scan.cuh"

namespace {

using at::Tensor;
using sia_bindings::ScanOutputs;

sia_bindings::ScanTuple junction_scan_cuda(const Tensor& logits, int64_t k, const Tensor& tau, const Tensor& temperature,
                                           bool entropy_topk, bool sample_topk, const Tensor& seed) {
  TORCH_CHECK_VALUE(logits.is_cuda() && logits.dim() == 2, "junction_scan_cuda: logits must be a [B, V] CUDA tensor");
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), V = logits.size(1);
  // Token ids are 32-bit in the kernel, with a tile (2048) of headroom for the alignment offset.
  TORCH_CHECK_VALUE(V >= 1 && V < (int64_t(1) << 31) - 2048, "junction_scan_cuda: need 1 <= V < 2^31 - 2048, got ", V);
  TORCH_CHECK_VALUE(V == 1 || logits.stride(1) == 1, "junction_scan_cuda: logits rows must be unit-stride");
  TORCH_CHECK_VALUE(logits.stride(0) >= 0, "junction_scan_cuda: row stride must be >= 0");
  TORCH_CHECK_VALUE(1 <= k && k <= V, "junction_scan_cuda: need 1 <= k <= V = ", V, ", got k = ", k);
  sia::CudaScanDType dt;
  switch (logits.scalar_type()) {
    case at::kFloat: dt = sia::CudaScanDType::f32; break;
    case at::kBFloat16: dt = sia::CudaScanDType::bf16; break;
    case at::kHalf: dt = sia::CudaScanDType::f16; break;
    default: TORCH_CHECK_TYPE(false, "junction_scan_cuda: logits must be f32, bf16 or f16, got ", logits.scalar_type());
  }
  for (const Tensor* t : {&tau, &temperature}) {
    TORCH_CHECK_VALUE(t->device() == logits.device() && t->scalar_type() == at::kFloat && t->dim() == 1 &&
                          t->size(0) == B && t->is_contiguous(),
                      "junction_scan_cuda: tau and temperature must be contiguous [B] f32 tensors on the logits' device");
  }
  TORCH_CHECK_VALUE(seed.device() == logits.device() && seed.scalar_type() == at::kLong && seed.numel() == 1,
                    "junction_scan_cuda: seed must be a [1] i64 tensor on the logits' device");
  ScanOutputs o(logits, k);
  Tensor workspace =
      at::empty({static_cast<int64_t>(sia::junction_scan_cuda_workspace_bytes(B, V, k))}, logits.options().dtype(at::kByte));
  const cudaError_t err = sia::junction_scan_cuda(
      logits.data_ptr(), tau.data_ptr<float>(), temperature.data_ptr<float>(), seed.data_ptr<int64_t>(),
      o.entropy.data_ptr<float>(), o.lse.data_ptr<float>(), o.gate.data_ptr<bool>(), o.topk_ids.data_ptr<int64_t>(),
      o.topk_logprobs.data_ptr<float>(), o.base_token.data_ptr<int64_t>(), o.junction_rows.data_ptr<int64_t>(),
      o.num_junctions.data_ptr<int32_t>(), o.junction_ids.data_ptr<int64_t>(), o.junction_logprobs.data_ptr<float>(),
      workspace.data_ptr(), B, V, logits.stride(0), k, dt, entropy_topk, sample_topk,
      c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "junction_scan_cuda: launch failed: ", cudaGetErrorString(err));
  return o.tuple();
}

}  // namespace

// FRAGMENT: the CPU op (a separate library) adds to the same namespace.
TORCH_LIBRARY_FRAGMENT(sia_kernels, m) {
  m.def(
      "junction_scan_cuda(Tensor logits, int k, Tensor tau, Tensor temperature, bool entropy_topk, "
      "bool sample_topk, Tensor seed) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sia_kernels, CUDA, m) { m.impl("junction_scan_cuda", &junction_scan_cuda); }
