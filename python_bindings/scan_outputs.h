// The ten JunctionScan outputs (docs/design.md §2), allocated at full size B on the logits' device,
// shared by the cpu and cuda ops so both return them in one order with one set of dtypes.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

namespace sia_bindings {

using at::Tensor;
using ScanTuple = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

struct ScanOutputs {
  Tensor entropy, lse, gate, topk_ids, topk_logprobs, base_token, junction_rows, num_junctions, junction_ids,
      junction_logprobs;

  ScanOutputs(const Tensor& logits, int64_t k) {
    const int64_t B = logits.size(0);
    const auto f32 = logits.options().dtype(at::kFloat);
    const auto i64 = logits.options().dtype(at::kLong);
    entropy = at::empty({B}, f32);
    lse = at::empty({B}, f32);
    gate = at::empty({B}, logits.options().dtype(at::kBool));
    topk_ids = at::empty({B, k}, i64);
    topk_logprobs = at::empty({B, k}, f32);
    base_token = at::empty({B}, i64);
    junction_rows = at::empty({B}, i64);
    num_junctions = at::empty({1}, logits.options().dtype(at::kInt));
    junction_ids = at::empty({B, k}, i64);
    junction_logprobs = at::empty({B, k}, f32);
  }

  ScanTuple tuple() const {
    return {entropy, lse, gate, topk_ids, topk_logprobs, base_token, junction_rows, num_junctions, junction_ids,
            junction_logprobs};
  }
};

}  // namespace sia_bindings
