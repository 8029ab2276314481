// Junction scan in CUDA C++ (DESIGN.md §1-§2), the twin of csrc/cpu/junction_scan.cpp.
//
// Kernel 1 gives every (row, vocabulary slice of 8192 tokens) its own CTA, so a batch of 1-8
// rows still fills the GPU. The slice is read once into shared memory (coalesced, converted to
// f32); everything else runs from there: the partial (m, d = sum e^(z-m), s = sum e^(z-m)(z-m)),
// an exact top-k by radix select on a unique 64-bit key (ordered value, then -id, so ties go to
// the lower id), and the slice's Gumbel-max winner when sampling from the full row.
// Kernel 2 (one CTA per row) folds the partials in slice order, selects and sorts the row's k
// candidates, writes its outputs, and the last CTA to finish compacts the junction rows.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "junction_scan.cuh"

namespace sia {
namespace {

constexpr int kSlice = 8192;  // tokens per CTA: 32 KB of f32 in shared memory
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct Cand {
  float v;
  int32_t id;  // -1: padding, ranks below every token
};

__device__ __forceinline__ float load_f(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) { return __bfloat162float(p[0]); }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(p[0]); }

// Float order as unsigned order; NaN ranks just above padding (its row raises anyway).
__device__ __forceinline__ uint32_t ordered(float v) {
  if (v != v) return 1u;
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Unique per token: larger value first, then the lower id. Padding is 0.
__device__ __forceinline__ uint64_t rank_key(float v, int32_t id) {
  return id < 0 ? 0ull : (uint64_t(ordered(v)) << 32) | uint64_t(~uint32_t(id));
}

// Philox4x32-10 keyed by (seed, row, token): counter (t / 4, row, row >> 32, 'SIA'), word t % 4.
__device__ __forceinline__ uint32_t noise_bits(uint64_t seed, int64_t row, int64_t tok) {
  uint32_t c0 = uint32_t(uint64_t(tok) >> 2), c1 = uint32_t(uint64_t(row)), c2 = uint32_t(uint64_t(row) >> 32),
           c3 = 0x00534941u;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const uint32_t w = uint32_t(tok) & 3u;
  return w == 0 ? c0 : w == 1 ? c1 : w == 2 ? c2 : c3;
}

// u in (0, 1) on a 2^-23 grid, never 0 or 1.
__device__ __forceinline__ float gumbel_from_bits(uint32_t bits) {
  const float u = float(bits >> 9) * 0x1p-23f + 0x1p-24f;
  return -logf(-logf(u));
}

struct MaxOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct OrOp {
  __device__ unsigned operator()(unsigned a, unsigned b) const { return a | b; }
};

// Every thread gets the result; fixed combination order, so the result is reproducible.
template <class T, class Op>
__device__ T block_reduce(T v, Op op) {
  __shared__ T sh[kWarps];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();  // sh may still be read by a previous call
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  T r = sh[0];
#pragma unroll
  for (int i = 1; i < kWarps; ++i) r = op(r, sh[i]);
  return r;
}

// Argmax of key with ties to the lower id (id < 0: none); every thread gets the winner.
__device__ void block_argmax(float& key, int64_t& id) {
  __shared__ float sk[kWarps];
  __shared__ int64_t si[kWarps];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float k2 = __shfl_down_sync(0xffffffffu, key, o);
    const int64_t i2 = __shfl_down_sync(0xffffffffu, id, o);
    if (i2 >= 0 && (id < 0 || k2 > key || (k2 == key && i2 < id))) {
      key = k2;
      id = i2;
    }
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    sk[threadIdx.x >> 5] = key;
    si[threadIdx.x >> 5] = id;
  }
  __syncthreads();
  key = sk[0];
  id = si[0];
  for (int w = 1; w < kWarps; ++w) {
    if (si[w] >= 0 && (id < 0 || sk[w] > key || (sk[w] == key && si[w] < id))) {
      key = sk[w];
      id = si[w];
    }
  }
}

// The want-th largest of n unique 64-bit keys (1 <= want <= n), by 8 passes of 8-bit histograms.
// key_of(i) gives key i; the same call on every thread of the block.
template <class KeyOf>
__device__ uint64_t radix_select(int n, int want, KeyOf key_of) {
  __shared__ unsigned hist[256];
  __shared__ int sh_digit, sh_want;
  uint64_t prefix = 0, mask = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const uint64_t key = key_of(i);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int c = 0, digit = 0;
      for (int bin = 255; bin >= 0; --bin) {
        if (c + int(hist[bin]) >= want) {
          digit = bin;
          break;
        }
        c += int(hist[bin]);
      }
      sh_digit = digit;
      sh_want = want - c;
    }
    __syncthreads();
    prefix |= uint64_t(sh_digit) << shift;
    mask |= uint64_t(255) << shift;
    want = sh_want;
    __syncthreads();
  }
  return prefix;
}

constexpr float kInf = __builtin_huge_valf();

template <class In>
__global__ void __launch_bounds__(kThreads) slice_kernel(
    // pointers
    const In* __restrict__ logits,
    const float* __restrict__ temperature,
    const int64_t* __restrict__ seed_p,
    float4* __restrict__ part,     // [B, S] (m, ref, d, s)
    unsigned* __restrict__ flags,  // [B, S] 1: NaN seen, 2: +inf seen
    float* __restrict__ gkey,      // [B, S] Gumbel winner key
    int32_t* __restrict__ gid,     // [B, S] Gumbel winner token, -1 if none
    Cand* __restrict__ cand,       // [B, S, kk_max]
    // sizes and strides
    int64_t V,
    int64_t row_stride,
    int S,
    int kk_max,
    // meta
    bool sample_full) {
  __shared__ float zs[kSlice];
  __shared__ int cpos;
  const int64_t b = blockIdx.x / S;
  const int s = blockIdx.x % S;
  const int64_t v0 = int64_t(s) * kSlice;
  const int L = int(V - v0 < kSlice ? V - v0 : int64_t(kSlice));
  const In* row = logits + b * row_stride + v0;

  // The only read of the logits: coalesced into shared memory.
  float mloc = -kInf;
  unsigned fl = 0;
  for (int i = threadIdx.x; i < L; i += kThreads) {
    const float z = load_f(row + i);
    zs[i] = z;
    mloc = fmaxf(mloc, z);
    fl |= (z != z) ? 1u : (z == kInf ? 2u : 0u);
  }
  const float m = block_reduce(mloc, MaxOp());
  fl = block_reduce(fl, OrOp());
  const float ref = m == -kInf ? 0.0f : m;  // all -inf: e^(-inf - 0) = 0, never NaN
  float dl = 0.0f, sl = 0.0f;
  for (int i = threadIdx.x; i < L; i += kThreads) {
    const float x = zs[i] - ref;
    const float e = expf(x);
    dl += e;
    sl += e > 0.0f ? e * x : 0.0f;
  }
  const float d = block_reduce(dl, SumOp());
  const float sm = block_reduce(sl, SumOp());
  if (threadIdx.x == 0) {
    part[blockIdx.x] = make_float4(m, ref, d, sm);
    flags[blockIdx.x] = fl;
  }

  // Top-kk of the slice: every key >= the kk-th largest (keys are unique).
  const int kk = min(kk_max, L);
  const uint64_t kth = radix_select(L, kk, [&](int i) { return rank_key(zs[i], int32_t(v0 + i)); });
  if (threadIdx.x == 0) cpos = 0;
  __syncthreads();
  Cand* out = cand + int64_t(blockIdx.x) * kk_max;
  for (int i = threadIdx.x; i < L; i += kThreads) {
    if (rank_key(zs[i], int32_t(v0 + i)) >= kth) out[atomicAdd(&cpos, 1)] = Cand{zs[i], int32_t(v0 + i)};
  }
  for (int i = kk + threadIdx.x; i < kk_max; i += kThreads) out[i] = Cand{-kInf, -1};

  // Gumbel-max over the slice: argmax z / T + G(seed, row, token).
  const float t = temperature[b];
  if (sample_full && t > 0.0f) {
    const float inv_t = 1.0f / t;
    const uint64_t seed = uint64_t(*seed_p);
    float best = -kInf;
    int64_t bid = -1;
    for (int i = threadIdx.x; i < L; i += kThreads) {
      const float key = zs[i] * inv_t + gumbel_from_bits(noise_bits(seed, b, v0 + i));
      if (key > best || bid < 0) {  // ascending ids per thread: strict > keeps the lower id
        best = key;
        bid = v0 + i;
      }
    }
    block_argmax(best, bid);
    if (threadIdx.x == 0) {
      gkey[blockIdx.x] = best;
      gid[blockIdx.x] = int32_t(bid);
    }
  }
}

__global__ void __launch_bounds__(kThreads) row_kernel(
    // pointers: scratch from slice_kernel
    const float4* __restrict__ part,
    const unsigned* __restrict__ flags,
    const float* __restrict__ gkey,
    const int32_t* __restrict__ gid,
    const Cand* __restrict__ cand,
    Cand* __restrict__ stage,      // [B, k]
    Cand* __restrict__ sorted,     // [B, k]
    unsigned* __restrict__ counter,
    // pointers: inputs
    const float* __restrict__ tau,
    const float* __restrict__ temperature,
    const int64_t* __restrict__ seed_p,
    // pointers: outputs
    float* __restrict__ entropy,
    float* __restrict__ lse_out,
    bool* __restrict__ gate,
    int64_t* __restrict__ topk_ids,
    float* __restrict__ topk_logprobs,
    int64_t* __restrict__ base_token,
    int64_t* __restrict__ junction_rows,
    int32_t* __restrict__ num_junctions,
    int64_t* __restrict__ junction_ids,
    float* __restrict__ junction_logprobs,
    // sizes
    int64_t B,
    int64_t k,
    int S,
    int kk_max,
    // meta
    bool entropy_topk,
    bool sample_topk) {
  __shared__ double sh_lse, sh_hfull;
  __shared__ int cpos;
  __shared__ bool sh_last;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;

  // lse and full-row entropy: fold the slice partials in slice order (double).
  if (tid == 0) {
    unsigned fl = 0;
    double M = -INFINITY;
    for (int s = 0; s < S; ++s) {
      fl |= flags[b * S + s];
      M = fmax(M, double(part[b * S + s].x));
    }
    double lse = NAN, hfull = NAN;
    if (fl & 1u) {
      lse = NAN;
    } else if (fl & 2u) {
      lse = INFINITY;
    } else if (M == -INFINITY) {
      lse = -INFINITY;
    } else {
      double d = 0.0, sm = 0.0;
      for (int s = 0; s < S; ++s) {
        const float4 p = part[b * S + s];
        if (p.z == 0.0f) continue;
        const double shift = double(p.y) - M;
        const double a = exp(shift);
        d += a * p.z;
        sm += a * (double(p.w) + double(p.z) * shift);
      }
      lse = M + log(d);
      hfull = log(d) - sm / d;
    }
    sh_lse = lse;
    sh_hfull = hfull;
    cpos = 0;
  }

  // The row's k best among its S * kk_max candidates, then each one's rank among them.
  const Cand* c = cand + b * S * kk_max;
  const int n = S * kk_max;
  const uint64_t kth = radix_select(n, int(k), [&](int i) { return rank_key(c[i].v, c[i].id); });
  Cand* st = stage + b * k;
  for (int i = tid; i < n; i += kThreads) {
    if (rank_key(c[i].v, c[i].id) >= kth) st[atomicAdd(&cpos, 1)] = c[i];
  }
  __syncthreads();
  Cand* so = sorted + b * k;
  for (int64_t j = tid; j < k; j += kThreads) {  // O(k^2 / threads): fine for the k of decoding
    const uint64_t kj = rank_key(st[j].v, st[j].id);
    int64_t r = 0;
    for (int64_t i = 0; i < k; ++i) r += rank_key(st[i].v, st[i].id) > kj;
    so[r] = st[j];
  }
  __syncthreads();

  const double lse = sh_lse;
  for (int64_t j = tid; j < k; j += kThreads) {
    topk_ids[b * k + j] = so[j].id;
    topk_logprobs[b * k + j] = float(double(so[j].v) - lse);
  }
  double H = sh_hfull;
  if (entropy_topk) {
    const double m0 = so[0].v;
    double dl = 0.0, sl = 0.0;
    for (int64_t j = tid; j < k; j += kThreads) {
      const double x = double(so[j].v) - m0;
      const double e = exp(x);
      dl += e;
      sl += e > 0.0 ? e * x : 0.0;
    }
    const double d = block_reduce(dl, SumOp());
    const double sm = block_reduce(sl, SumOp());
    H = isfinite(m0) ? log(d) - sm / d : NAN;
  }
  if (!isfinite(lse)) H = NAN;

  // Base token: greedy is the first candidate; else Gumbel-max among the candidates or the row.
  const float t = temperature[b];
  int64_t base = so[0].id;
  if (t > 0.0f && sample_topk) {
    const float inv_t = 1.0f / t;
    const uint64_t seed = uint64_t(*seed_p);
    float best = -kInf;
    int64_t bj = -1;
    for (int64_t j = tid; j < k; j += kThreads) {
      const float key = so[j].v * inv_t + gumbel_from_bits(noise_bits(seed, b, so[j].id));
      if (key > best || bj < 0) {
        best = key;
        bj = j;
      }
    }
    block_argmax(best, bj);
    base = so[bj].id;
  } else if (t > 0.0f) {
    float best = -kInf;
    int32_t bid = -1;
    for (int s = 0; s < S; ++s) {  // slices ascend in token id: strict > keeps the lower id
      const int32_t g = gid[b * S + s];
      if (g >= 0 && (bid < 0 || gkey[b * S + s] > best)) {
        best = gkey[b * S + s];
        bid = g;
      }
    }
    if (bid >= 0) base = bid;
  }
  if (tid == 0) {
    const float Hf = float(H);
    entropy[b] = Hf;
    lse_out[b] = float(lse);
    gate[b] = Hf > tau[b];
    base_token[b] = base;
  }

  // The last CTA to finish compacts the junction rows in row order.
  __threadfence();
  __syncthreads();
  if (tid == 0) sh_last = atomicAdd(counter, 1u) == unsigned(B - 1);
  __syncthreads();
  if (!sh_last) return;
  __threadfence();
  __shared__ int warp_count[kWarps];
  __shared__ int64_t sh_J;
  int64_t J = 0;
  for (int64_t base_row = 0; base_row < B; base_row += kThreads) {
    const int64_t r = base_row + tid;
    const bool g = r < B && *reinterpret_cast<volatile bool*>(gate + r);
    const unsigned ballot = __ballot_sync(0xffffffffu, g);
    const int lane = tid & 31, w = tid >> 5;
    if (lane == 0) warp_count[w] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int i = 0; i < kWarps; ++i) {
      before += i < w ? warp_count[i] : 0;
      total += warp_count[i];
    }
    if (g) junction_rows[J + before + __popc(ballot & ((1u << lane) - 1u))] = r;
    J += total;
    __syncthreads();
  }
  if (tid == 0) {
    sh_J = J;
    num_junctions[0] = int32_t(J);
    *counter = 0;  // ready for the next launch
  }
  __syncthreads();
  for (int64_t r = tid; r < B; r += kThreads) {
    if (r >= J) junction_rows[r] = 0;
  }
  __threadfence_block();
  __syncthreads();
  for (int64_t i = tid; i < B * k; i += kThreads) {
    const int64_t j = i / k, col = i % k;
    if (j < sh_J) {
      const int64_t src = *reinterpret_cast<volatile int64_t*>(junction_rows + j) * k + col;
      junction_ids[i] = __ldcg(reinterpret_cast<const long long*>(topk_ids) + src);
      junction_logprobs[i] = __ldcg(topk_logprobs + src);
    } else {
      junction_ids[i] = 0;
      junction_logprobs[i] = 0.0f;
    }
  }
}

struct Layout {
  size_t part, flags, gkey, gid, cand, stage, sorted, counter, total;
};

size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

Layout layout(int64_t B, int64_t V, int64_t k) {
  const int64_t S = (V + kSlice - 1) / kSlice;
  const int64_t kk_max = k < kSlice ? k : kSlice;
  Layout l{};
  size_t o = 0;
  l.part = o;
  o = align256(o + sizeof(float4) * B * S);
  l.flags = o;
  o = align256(o + sizeof(unsigned) * B * S);
  l.gkey = o;
  o = align256(o + sizeof(float) * B * S);
  l.gid = o;
  o = align256(o + sizeof(int32_t) * B * S);
  l.cand = o;
  o = align256(o + sizeof(Cand) * B * S * kk_max);
  l.stage = o;
  o = align256(o + sizeof(Cand) * B * k);
  l.sorted = o;
  o = align256(o + sizeof(Cand) * B * k);
  l.counter = o;
  o = align256(o + sizeof(unsigned));
  l.total = o;
  return l;
}

}  // namespace

size_t junction_scan_cuda_workspace_bytes(int64_t B, int64_t V, int64_t k) { return layout(B, V, k).total; }

cudaError_t junction_scan_cuda(const void* logits, const float* tau, const float* temperature, const int64_t* seed,
                               float* entropy, float* lse, bool* gate, int64_t* topk_ids, float* topk_logprobs,
                               int64_t* base_token, int64_t* junction_rows, int32_t* num_junctions,
                               int64_t* junction_ids, float* junction_logprobs, void* workspace, int64_t B,
                               int64_t V, int64_t row_stride, int64_t k, CudaScanDType dtype, bool entropy_topk,
                               bool sample_topk, cudaStream_t stream) {
  if (B <= 0) return cudaMemsetAsync(num_junctions, 0, sizeof(int32_t), stream);
  if (V <= 0 || V >= (int64_t(1) << 31) || k < 1 || k > V) return cudaErrorInvalidValue;
  const int S = int((V + kSlice - 1) / kSlice);
  const int kk_max = int(k < kSlice ? k : kSlice);
  const Layout l = layout(B, V, k);
  char* w = static_cast<char*>(workspace);
  auto* part = reinterpret_cast<float4*>(w + l.part);
  auto* flags = reinterpret_cast<unsigned*>(w + l.flags);
  auto* gkey = reinterpret_cast<float*>(w + l.gkey);
  auto* gid = reinterpret_cast<int32_t*>(w + l.gid);
  auto* cand = reinterpret_cast<Cand*>(w + l.cand);
  auto* stage = reinterpret_cast<Cand*>(w + l.stage);
  auto* sorted = reinterpret_cast<Cand*>(w + l.sorted);
  auto* counter = reinterpret_cast<unsigned*>(w + l.counter);
  cudaError_t err = cudaMemsetAsync(counter, 0, sizeof(unsigned), stream);
  if (err != cudaSuccess) return err;
  const bool sample_full = !sample_topk;
  const dim3 grid1(unsigned(B * S));
  switch (dtype) {
    case CudaScanDType::f32:
      slice_kernel<float><<<grid1, kThreads, 0, stream>>>(static_cast<const float*>(logits), temperature, seed, part,
                                                          flags, gkey, gid, cand, V, row_stride, S, kk_max,
                                                          sample_full);
      break;
    case CudaScanDType::bf16:
      slice_kernel<__nv_bfloat16><<<grid1, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(logits),
                                                                  temperature, seed, part, flags, gkey, gid, cand, V,
                                                                  row_stride, S, kk_max, sample_full);
      break;
    case CudaScanDType::f16:
      slice_kernel<__half><<<grid1, kThreads, 0, stream>>>(static_cast<const __half*>(logits), temperature, seed, part,
                                                           flags, gkey, gid, cand, V, row_stride, S, kk_max,
                                                           sample_full);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  row_kernel<<<unsigned(B), kThreads, 0, stream>>>(part, flags, gkey, gid, cand, stage, sorted, counter, tau,
                                                   temperature, seed, entropy, lse, gate, topk_ids, topk_logprobs,
                                                   base_token, junction_rows, num_junctions, junction_ids,
                                                   junction_logprobs, B, k, S, kk_max, entropy_topk, sample_topk);
  return cudaGetLastError();
}

}  // namespace sia
