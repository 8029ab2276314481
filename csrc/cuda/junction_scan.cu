// Junction scan in CUDA C++ (docs/design.md §1-§2), the twin of csrc/cpu/junction_scan.cpp.
//
// Kernel 1, slice_kernel: grid = B rows x S vocabulary slices, S chosen so that about
// kTargetCtas CTAs run, so a batch of 1-8 rows still fills the GPU. A CTA streams its slice in
// tiles of 2048 tokens; each thread takes 8 tokens per tile with 16-byte loads (scalar loads only
// for the vectors cut by a row's ends, so any V and row stride vectorise; the next tile's loads
// are issued before the current tile is processed) and keeps in registers
//   - its online (m, d = sum e^(z-m), s = sum e^(z-m)(z-m)): one block reduction per CTA, none
//     per tile (a per-tile reduction would cost more instructions than the bandwidth allows),
//   - its Gumbel-max winner (full-row sampling), skipping tokens that cannot beat the best key
//     published so far,
// while top-k candidates pass a threshold filter: a token enters a shared buffer only if its
// value reaches the running threshold, which after the first tile almost no token does. The
// buffer is cut back to its best kk by a block-wide radix select when it fills.
// Kernel 2, row_kernel (one CTA per row): folds the row's partials in parallel (double, fixed
// order), selects and sorts its k candidates, writes its outputs; the last CTA to finish compacts
// the junction rows in row order. Two launches and a 4-byte memset, no host sync.
//
// Selection everywhere is a radix select on a unique 64-bit key (ordered value, then -id, so
// ties go to the lower id) with warp-level prefix sums over the 256 bins (one bin per thread).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "junction_scan.cuh"

namespace sia {
namespace {

constexpr int kThreads = 256;  // = radix bins: one bin per thread
constexpr int kWarps = kThreads / 32;
constexpr int kPerThread = 8;                     // tokens per thread per tile: 16 bytes of bf16
constexpr int kTile = kThreads * kPerThread;      // 2048 tokens
constexpr int kBufCap = 2 * kTile;                // shared candidate keys (32 KB)
constexpr int kMaxBufK = kBufCap - kTile;         // kk the buffer holds while a tile streams in
constexpr int64_t kTargetCtas = 512;              // ~4 CTAs per SM on an H100 or A100
constexpr int64_t kSortSmem = 512;                // row_kernel sorts k <= this in shared memory
constexpr int kVecMax = 8;                        // elements per 16-byte vector, 2-byte dtypes
constexpr int kSparseLanes = 8;                   // <= this many appending lanes: per-token atomics
// Largest Gumbel noise: w >= 2^-65 gives E >= 2^-65 and g = -log E <= 45.06.
constexpr float kGumbelMax = 45.5f;
constexpr float kLog2e = 1.4426950408889634f;
constexpr double kLn2 = 0.6931471805599453;
constexpr float kInf = __builtin_huge_valf();
constexpr unsigned kFull = 0xffffffffu;
static_assert(kThreads == 256, "radix_select keeps one of 256 bins per thread");

// ------------------------------------------------------------------ small helpers

// Float order as unsigned order; -0 ranks as +0, NaN just above the padding key 0.
__device__ __forceinline__ uint32_t ordered(float v) {
  if (v != v) return 1u;
  const uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float unordered(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}
// Unique per token: larger value first, then the lower id; 0 is padding (below every token).
__device__ __forceinline__ uint64_t make_key(float v, uint32_t id) { return (uint64_t(ordered(v)) << 32) | ~id; }
__device__ __forceinline__ float key_value(uint64_t key) { return unordered(uint32_t(key >> 32)); }
__device__ __forceinline__ int64_t key_id(uint64_t key) { return int64_t(~uint32_t(key)); }

// The smallest float above x (x itself for NaN / +inf): "v > x" is "v >= next_up(x)".
__device__ __forceinline__ float next_up(float x) {
  if (x != x || x == kInf) return x;
  if (x == 0.0f) return __uint_as_float(1u);
  const uint32_t u = __float_as_uint(x);
  return __uint_as_float(x > 0.0f ? u + 1u : u - 1u);
}

// max that keeps NaN (one FMNMX.NAN on sm_80+), so a NaN logit poisons d and flags its row.
__device__ __forceinline__ float max_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return (a != a || b != b) ? __int_as_float(0x7fffffff) : fmaxf(a, b);
#endif
}

// 2^x, one MUFU.EX2 (relative error ~2^-22); 2^-127 and below flush to 0.
__device__ __forceinline__ float ex2(float x) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return exp2f(x);
#endif
}

// Philox4x32-10 (Salmon et al., SC'11), counter (c0, c1, 0, 0), key (seed lo, seed hi).
__device__ __forceinline__ uint4 philox(uint64_t seed, uint32_t c0, uint32_t c1) {
  uint32_t x0 = c0, x1 = c1, x2 = 0u, x3 = 0u, k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, x0), lo0 = 0xD2511F53u * x0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, x2), lo1 = 0xCD9E8D57u * x2;
    x0 = hi1 ^ x1 ^ k0;
    x1 = lo1;
    x2 = hi0 ^ x3 ^ k1;
    x3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return make_uint4(x0, x1, x2, x3);
}

// Gumbel noise from two 32-bit words: w = hi 2^-32 + (lo + 1/2) 2^-64 in (0, 1 - 2^-24],
// E = -log(1 - w) >= 2^-65 (series for small w), g = -log E <= 45.06. Tail exact to ~40 nats.
__device__ __forceinline__ float gumbel_from_words(uint32_t hi, uint32_t lo) {
  float w = fmaf(float(hi), 0x1p-32f, fmaf(float(lo), 0x1p-64f, 0x1p-65f));
  w = fminf(w, 0x1.fffffep-1f);
  const float e = w < 0x1p-10f ? w * fmaf(w, fmaf(w, 1.0f / 3.0f, 0.5f), 1.0f) : -log1pf(-w);
  return -logf(e);
}

// Noise of token t in row b: Philox counter (t >> 1, b), words (r0, r1) for even t, (r2, r3) for odd.
__device__ __forceinline__ float gumbel_noise(uint64_t seed, uint32_t row, uint32_t tok) {
  const uint4 r = philox(seed, tok >> 1, row);
  return (tok & 1u) ? gumbel_from_words(r.z, r.w) : gumbel_from_words(r.x, r.y);
}

// ------------------------------------------------------------------ loads

template <class T>
struct Elem;
template <>
struct Elem<float> {
  using Bits = uint32_t;
  static constexpr uint32_t kNegInf = 0xff800000u;
  static __device__ float to_float(float x) { return x; }
};
template <>
struct Elem<__nv_bfloat16> {
  using Bits = uint16_t;
  static constexpr uint16_t kNegInf = 0xff80u;
  static __device__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};
template <>
struct Elem<__half> {
  using Bits = uint16_t;
  static constexpr uint16_t kNegInf = 0xfc00u;
  static __device__ float to_float(__half x) { return __half2float(x); }
};

// The 16 bytes of tokens t0 .. t0 + VE of a row (row + t0 is 16-byte aligned when t0 >= 0):
// one streaming vector load when all are in [0, V), else scalar loads with -inf outside.
template <class T>
__device__ __forceinline__ uint4 load_vec(const T* row, int t0, int V) {
  using Bits = typename Elem<T>::Bits;
  constexpr int VE = 16 / int(sizeof(T));
  if (t0 >= 0 && t0 + VE <= V) return __ldcs(reinterpret_cast<const uint4*>(row + t0));
  const Bits* p = reinterpret_cast<const Bits*>(row);
  uint32_t w[4];
  if constexpr (VE == 4) {
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = (t0 + i >= 0 && t0 + i < V) ? p[t0 + i] : Elem<T>::kNegInf;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int t = t0 + 2 * i;
      const uint32_t lo = (t >= 0 && t < V) ? p[t] : Elem<T>::kNegInf;
      const uint32_t hi = (t + 1 >= 0 && t + 1 < V) ? p[t + 1] : Elem<T>::kNegInf;
      w[i] = lo | (hi << 16);  // element 0 sits in the low half (little-endian)
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ void to_floats(const uint4 (&w)[2], float (&v)[8], float) {
  const uint32_t u[8] = {w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y, w[1].z, w[1].w};
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = __uint_as_float(u[i]);
}
__device__ __forceinline__ void to_floats(const uint4 (&w)[1], float (&v)[8], __nv_bfloat16) {
  const uint32_t u[4] = {w[0].x, w[0].y, w[0].z, w[0].w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(u[i] << 16);
    v[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void to_floats(const uint4 (&w)[1], float (&v)[8], __half) {
  const uint32_t u[4] = {w[0].x, w[0].y, w[0].z, w[0].w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __half2float(__ushort_as_half(uint16_t(u[i] & 0xffffu)));
    v[2 * i + 1] = __half2float(__ushort_as_half(uint16_t(u[i] >> 16)));
  }
}

// ------------------------------------------------------------------ block-wide steps

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
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(kFull, v, o));
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
    const float k2 = __shfl_down_sync(kFull, key, o);
    const int64_t i2 = __shfl_down_sync(kFull, id, o);
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

struct SelectSmem {
  unsigned hist[256];
  unsigned warp_total[kWarps];
  unsigned digit, want, count;
  unsigned long long found;
};

// The want-th largest of n keys (1 <= want <= n), by 8-bit digits from the top. Per digit: a
// histogram (lanes with equal digits add once, via __match_any_sync, so equal top bytes do not
// serialise on one bin), then a block-wide prefix sum over the bins from the top (warp shuffles
// and one add per lower warp) and the one thread whose bin crosses `want` publishes it. Stops
// early when a single key is left with the chosen prefix. key_of(i) gives key i; every thread
// of the block calls with the same arguments, and gets the result.
template <class KeyOf>
__device__ uint64_t radix_select(int64_t n, unsigned want, KeyOf key_of, SelectSmem& sm) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  uint64_t prefix = 0, mask = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    sm.hist[tid] = 0;
    __syncthreads();
    for (int64_t base = 0; base < n; base += kThreads) {  // same trip count on every thread
      const int64_t i = base + tid;
      const uint64_t key = i < n ? key_of(i) : 0ull;
      const bool in = i < n && (key & mask) == prefix;
      const unsigned digit = in ? unsigned(key >> shift) & 255u : 256u;
      const unsigned peers = __match_any_sync(kFull, digit);
      if (in && lane == __ffs(peers) - 1) atomicAdd(&sm.hist[digit], unsigned(__popc(peers)));
    }
    __syncthreads();
    // Thread tid owns bin 255 - tid, so an inclusive scan over tid counts keys with digit >= bin.
    const unsigned c = sm.hist[255 - tid];
    unsigned incl = c;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned y = __shfl_up_sync(kFull, incl, o);
      if (lane >= o) incl += y;
    }
    if (lane == 31) sm.warp_total[warp] = incl;
    __syncthreads();
    for (int w = 0; w < warp; ++w) incl += sm.warp_total[w];
    const unsigned excl = incl - c;
    if (excl < want && want <= incl) {
      sm.digit = 255u - unsigned(tid);
      sm.want = want - excl;
      sm.count = c;
    }
    __syncthreads();
    prefix |= uint64_t(sm.digit) << shift;
    mask |= uint64_t(255) << shift;
    want = sm.want;
    if (sm.count == 1u && shift > 0) {  // one key has this prefix: it is the answer
      for (int64_t i = tid; i < n; i += kThreads) {
        const uint64_t key = key_of(i);
        if ((key & mask) == prefix) sm.found = key;
      }
      __syncthreads();
      return sm.found;
    }
  }
  return prefix;
}

// ------------------------------------------------------------------ kernel 1: slices

struct SliceSmem {
  unsigned long long buf[kBufCap];  // candidate keys of this slice
  SelectSmem sel;
  unsigned count, count2;
  unsigned best;  // ordered(best Gumbel key published by any thread)
};

// Keep the keys >= kth among buf[0, n) at buf[0, ...) (exactly kk of them: keys are unique).
__device__ void keep_top(SliceSmem& sh, unsigned n, uint64_t kth) {
  const int lane = threadIdx.x & 31;
  if (threadIdx.x == 0) sh.count2 = 0;
  __syncthreads();
  for (unsigned base = 0; base < n; base += kThreads) {
    const unsigned i = base + threadIdx.x;
    const uint64_t key = i < n ? sh.buf[i] : 0ull;
    const bool keep = i < n && key >= kth;
    __syncthreads();  // this chunk is read before any write; writes land below base + kThreads
    const unsigned ballot = __ballot_sync(kFull, keep);
    if (ballot) {
      unsigned at = 0;
      if (lane == 0) at = atomicAdd(&sh.count2, unsigned(__popc(ballot)));
      at = __shfl_sync(kFull, at, 0);
      if (keep) sh.buf[at + __popc(ballot & ((1u << lane) - 1u))] = key;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) sh.count = sh.count2;
  __syncthreads();
}

// 3 CTAs per SM (<= 80 registers; a cap of 64 spills on the sampling path): with the prefetch,
// 24 KB (bf16) or 48 KB (f32) of loads in flight per SM.
template <class T>
__global__ void __launch_bounds__(kThreads, 3) slice_kernel(
    // pointers
    const T* __restrict__ logits,
    const float* __restrict__ temperature,
    const int64_t* __restrict__ seed_p,
    float4* __restrict__ part,                // [B, S] (m, ref, d, s / ln 2)
    unsigned* __restrict__ flags,             // [B, S] 1: NaN seen, 2: +inf seen
    float* __restrict__ gkey,                 // [B, S] Gumbel winner key
    int32_t* __restrict__ gid,                // [B, S] Gumbel winner token, -1 if none
    unsigned long long* __restrict__ cand,    // [B, S, kk] top-kk keys of each slice, 0 = padding
    // sizes and strides
    int64_t V,
    int64_t row_stride,
    int S,
    int tiles_per_slice,
    int tiles,
    int kk,
    // meta
    bool sample_full) {
  constexpr int VE = 16 / int(sizeof(T));  // elements per 16-byte vector
  constexpr int NV = kPerThread / VE;      // vectors per thread per tile
  __shared__ SliceSmem sh;
  const int tid = threadIdx.x, lane = tid & 31;
  const int64_t b = blockIdx.x / S;
  const int s = int(blockIdx.x % S);
  const T* row = logits + b * row_stride;
  // Tiles sit on 16-byte boundaries: token t is at virtual position t + o of the row.
  const int64_t o = int64_t((reinterpret_cast<uintptr_t>(row) & 15u) / sizeof(T));
  const int tile0 = s * tiles_per_slice;
  const int tile1 = min(tile0 + tiles_per_slice, tiles);
  // First token of this thread's vector q in tile j (vectors of a warp are contiguous). Token
  // arithmetic is 32-bit (V < 2^31 - kTile): fewer instructions per tile than 64-bit indices.
  const int V32 = int(V);
  auto tok0 = [&](int j, int q) { return j * kTile + q * (kThreads * VE) + tid * VE - int(o); };

  if (tid == 0) {
    sh.count = 0;
    sh.best = ordered(-kInf);
  }
  const float temp = temperature[b];
  const bool sampling = sample_full && temp > 0.0f;  // the same on every thread of the CTA
  const uint64_t seed = sampling ? uint64_t(*seed_p) : 0ull;
  float m = -kInf, r = 0.0f, d = 0.0f, s2 = 0.0f;  // base 2: s2 = sum 2^t t, t = (z - r) log2 e
  float best = -kInf;
  int64_t best_id = -1;
  float thr = __int_as_float(0x7fffffff);  // a token enters the buffer iff !(z < thr); NaN: all do

  uint4 cur[NV], nxt[NV];
#pragma unroll
  for (int q = 0; q < NV; ++q) cur[q] = load_vec(row, tok0(tile0, q), V32);
  __syncthreads();  // sh initialised

  for (int j = tile0; j < tile1; ++j) {
#pragma unroll
    for (int q = 0; q < NV; ++q) nxt[q] = j + 1 < tile1 ? load_vec(row, tok0(j + 1, q), V32) : make_uint4(0, 0, 0, 0);
    float v[kPerThread];
    to_floats(cur, v, T());
    float mx = v[0];
#pragma unroll
    for (int e = 1; e < kPerThread; ++e) mx = max_nan(mx, v[e]);

    // Online (m, d, s): rescale only when the thread's max grows (d == 0: nothing to rescale).
    if (mx > m) {
      if (d > 0.0f) {
        const float delta = (r - mx) * kLog2e;
        const float a = ex2(delta);
        s2 = a * fmaf(d, delta, s2);
        d *= a;
      }
      m = mx;
      r = mx;
    }
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      // Subtract first: the log2(e) rounding stays relative to z - r, not to z. A -inf logit
      // clamps to 2^-127 = 0 (never 0 * inf); NaN and +inf (r = +inf) make t NaN, and d NaN.
      const float t = max_nan((v[e] - r) * kLog2e, -127.0f);
      const float p = ex2(t);
      d += p;
      s2 = fmaf(p, t, s2);
    }

    // The first tile's threshold: the kk-th largest thread max. At least kk tokens reach it,
    // and later tokens need only beat it, so most of them skip the buffer from the start.
    if (j == tile0 && kk <= kThreads) {
      bool any = false;
#pragma unroll
      for (int q = 0; q < NV; ++q) any |= tok0(j, q) + VE > 0 && tok0(j, q) < V32;
      const uint64_t mine = any ? make_key(mx, uint32_t(tid)) : 0ull;
      const uint64_t kth = radix_select(kThreads, unsigned(kk), [&](int64_t) { return mine; }, sh.sel);
      if (kth != 0ull) thr = key_value(kth);
    }

    // Top-k candidates: a token enters the buffer iff !(z < thr). A warp with few such threads
    // (the common case once thr is set) appends with one shared atomic per token, only on those
    // threads; a warp with many (a first tile before thr exists, rising logits) appends
    // warp-aggregated, one atomic per warp and token slot, so one address never takes 32.
    bool refill = false;
    const bool hit = !(mx < thr);
    const unsigned hits = __ballot_sync(kFull, hit);
    if (hit && __popc(hits) <= kSparseLanes) {
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) {
        if (!(v[e] < thr)) {
          const int t = tok0(j, e / VE) + e % VE;
          if (t >= 0 && t < V32) {
            const unsigned at = atomicAdd(&sh.count, 1u);
            sh.buf[at] = make_key(v[e], uint32_t(t));
            refill |= at + 1u > unsigned(kMaxBufK) || (thr != thr && at + 1u > unsigned(kk));
          }
        }
      }
    } else if (__popc(hits) > kSparseLanes) {  // the same on every lane of the warp
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) {
        const int t = tok0(j, e / VE) + e % VE;
        const bool pass = hit && !(v[e] < thr) && t >= 0 && t < V32;
        const unsigned ballot = __ballot_sync(kFull, pass);
        if (ballot) {
          unsigned at = 0;
          if (lane == 0) {
            at = atomicAdd(&sh.count, unsigned(__popc(ballot)));
            const unsigned end = at + unsigned(__popc(ballot));
            refill |= end > unsigned(kMaxBufK) || (thr != thr && end > unsigned(kk));
          }
          at = __shfl_sync(kFull, at, 0);
          if (pass) sh.buf[at + __popc(ballot & ((1u << lane) - 1u))] = make_key(v[e], uint32_t(t));
        }
      }
    }

    // Full-row Gumbel-max: key = z + T g (one FMA, never overflows for T <= 1). A thread skips
    // its 8 tokens when even the largest noise cannot reach the best key published so far
    // (every published key is some token's key, so a skipped token can neither beat nor tie
    // the winner; the FMA rounds monotonically, so the bound needs no slack).
    if (sampling) {
      const float published = unordered(*reinterpret_cast<volatile unsigned*>(&sh.best));
      if (!(fmaf(temp, kGumbelMax, mx) < fmaxf(best, published))) {
        uint4 rnd = make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int e = 0; e < kPerThread; ++e) {
          const int t = tok0(j, e / VE) + e % VE;
          if (e % VE == 0 || (t & 1) == 0) rnd = philox(seed, uint32_t(t) >> 1, uint32_t(b));
          if (t >= 0 && t < V32) {
            const float g = (t & 1) ? gumbel_from_words(rnd.z, rnd.w) : gumbel_from_words(rnd.x, rnd.y);
            const float key = fmaf(temp, g, v[e]);
            if (key > best) {  // tokens ascend per thread: strict > keeps the lower id
              best = key;
              best_id = t;
            }
          }
        }
        if (best > published) atomicMax(&sh.best, ordered(best));
      }
    }

    // Cut the buffer back to its best kk when the next tile might not fit (uniform branch).
    if (__syncthreads_or(refill)) {
      const unsigned n = sh.count;
      const uint64_t kth = radix_select(n, unsigned(kk), [&](int64_t i) { return sh.buf[i]; }, sh.sel);
      keep_top(sh, n, kth);
      thr = next_up(key_value(kth));  // later tokens have larger ids: they must beat it strictly
    }
#pragma unroll
    for (int q = 0; q < NV; ++q) cur[q] = nxt[q];
  }

  // The slice's top-kk, padded with 0.
  const unsigned n = sh.count;
  if (n > unsigned(kk)) {
    const uint64_t kth = radix_select(n, unsigned(kk), [&](int64_t i) { return sh.buf[i]; }, sh.sel);
    keep_top(sh, n, kth);
  }
  unsigned long long* out = cand + int64_t(blockIdx.x) * kk;
  const unsigned kept = min(n, unsigned(kk));
  for (int i = tid; i < kk; i += kThreads) out[i] = unsigned(i) < kept ? sh.buf[i] : 0ull;

  // The slice's (m, d, s): rescale every thread's partial to the slice max, sum in fixed order.
  const float M = block_reduce(m, MaxOp());
  const float R = M == -kInf ? 0.0f : M;  // no finite logit: d = 0, never NaN
  float dd = d, ss = s2;
  if (d > 0.0f) {
    const float delta = (r - R) * kLog2e;
    const float a = ex2(delta);
    ss = a * fmaf(d, delta, s2);
    dd = d * a;
  }
  const float D = block_reduce(dd, SumOp());
  const float S2 = block_reduce(ss, SumOp());
  unsigned fl = 0;
  if (D != D) {  // a NaN or +inf in the slice (rare): read it again to tell which
    const int64_t lo = max(int64_t(tile0) * kTile - o, int64_t(0));
    const int64_t hi = min(int64_t(tile1) * kTile - o, V);
    for (int64_t t = lo + tid; t < hi; t += kThreads) {
      const float z = Elem<T>::to_float(row[t]);
      fl |= z != z ? 1u : (z == kInf ? 2u : 0u);
    }
    fl = block_reduce(fl, OrOp());
  }
  if (tid == 0) {
    part[blockIdx.x] = make_float4(M, R, D, S2);
    flags[blockIdx.x] = fl;
  }
  if (sampling) {
    block_argmax(best, best_id);
    if (tid == 0) {
      gkey[blockIdx.x] = best;
      gid[blockIdx.x] = int32_t(best_id);
    }
  } else if (tid == 0) {
    gid[blockIdx.x] = -1;
  }
}

// ------------------------------------------------------------------ kernel 2: rows

__global__ void __launch_bounds__(kThreads) row_kernel(
    // pointers: scratch from slice_kernel
    const float4* __restrict__ part,
    const unsigned* __restrict__ flags,
    const float* __restrict__ gkey,
    const int32_t* __restrict__ gid,
    const unsigned long long* __restrict__ cand,
    unsigned long long* __restrict__ stage,  // [B, 2k] when k > kSortSmem, else unused
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
    int kk,
    // meta
    bool entropy_topk,
    bool sample_topk) {
  __shared__ unsigned long long sh_st[kSortSmem], sh_so[kSortSmem];
  __shared__ SelectSmem sel;
  __shared__ unsigned cpos;
  __shared__ bool sh_last;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;

  // lse and full-row entropy: fold the slice partials (double, fixed order, all threads).
  unsigned fl = 0;
  float Mf = -kInf;
  for (int i = tid; i < S; i += kThreads) {
    fl |= flags[b * S + i];
    Mf = fmaxf(Mf, part[b * S + i].x);
  }
  fl = block_reduce(fl, OrOp());
  Mf = block_reduce(Mf, MaxOp());
  double lse, hfull = NAN;
  if (fl & 1u) {
    lse = NAN;
  } else if (fl & 2u) {
    lse = INFINITY;
  } else if (Mf == -kInf) {
    lse = -INFINITY;
  } else {
    const double M = Mf;
    double d = 0.0, sm = 0.0;
    for (int i = tid; i < S; i += kThreads) {
      const float4 p = part[b * S + i];
      if (p.z == 0.0f) continue;
      const double shift = double(p.y) - M;  // <= 0
      const double a = exp(shift);
      d += a * p.z;
      sm += a * (double(p.w) * kLn2 + double(p.z) * shift);
    }
    d = block_reduce(d, SumOp());
    sm = block_reduce(sm, SumOp());
    lse = M + log(d);
    hfull = log(d) - sm / d;
  }

  // The row's k best among its S * kk candidate keys, then each one's rank among them.
  const unsigned long long* c = cand + b * S * kk;
  const int64_t n = int64_t(S) * kk;  // >= k: every slice gave min(kk, its tokens) real keys
  const uint64_t kth = radix_select(n, unsigned(k), [&](int64_t i) { return uint64_t(__ldcg(c + i)); }, sel);
  const bool in_smem = k <= kSortSmem;
  unsigned long long* st = in_smem ? sh_st : stage + b * 2 * k;
  unsigned long long* so = in_smem ? sh_so : stage + b * 2 * k + k;
  if (tid == 0) cpos = 0;
  __syncthreads();
  for (int64_t i = tid; i < n; i += kThreads) {
    const unsigned long long key = __ldcg(c + i);
    if (key >= kth) st[atomicAdd(&cpos, 1u)] = key;  // exactly k: keys are unique
  }
  __syncthreads();
  for (int64_t j = tid; j < k; j += kThreads) {  // O(k^2 / threads): fine for the k of decoding
    const unsigned long long kj = st[j];
    int64_t rank = 0;
    for (int64_t i = 0; i < k; ++i) rank += st[i] > kj;
    so[rank] = kj;
  }
  __syncthreads();

  for (int64_t j = tid; j < k; j += kThreads) {
    topk_ids[b * k + j] = key_id(so[j]);
    topk_logprobs[b * k + j] = float(double(key_value(so[j])) - lse);
  }
  double H = hfull;
  if (entropy_topk) {
    const double m0 = key_value(so[0]);
    double dl = 0.0, sl = 0.0;
    for (int64_t j = tid; j < k; j += kThreads) {
      const double x = double(key_value(so[j])) - m0;
      const double e = exp(x);
      dl += e;
      sl += e > 0.0 ? e * x : 0.0;
    }
    const double d = block_reduce(dl, SumOp());
    const double sm = block_reduce(sl, SumOp());
    H = isfinite(m0) ? log(d) - sm / d : NAN;
  }
  if (!isfinite(lse)) H = NAN;

  // Base token: greedy is the first candidate; else Gumbel-max among the candidates (noise keyed
  // by token id, as in full-row sampling; ties to the better rank) or over the whole row.
  const float temp = temperature[b];
  int64_t base = key_id(so[0]);
  if (temp > 0.0f && sample_topk) {
    const uint64_t seed = uint64_t(*seed_p);
    float best = -kInf;
    int64_t bj = -1;
    for (int64_t j = tid; j < k; j += kThreads) {
      const float g = gumbel_noise(seed, uint32_t(b), uint32_t(key_id(so[j])));
      const float key = fmaf(temp, g, key_value(so[j]));
      if (key > best) {
        best = key;
        bj = j;
      }
    }
    block_argmax(best, bj);
    if (bj >= 0) base = key_id(so[bj]);
  } else if (temp > 0.0f) {
    float best = -kInf;
    int64_t bid = -1;
    for (int i = tid; i < S; i += kThreads) {  // slices ascend in token id: strict > keeps the lower id
      const int32_t g = gid[b * S + i];
      if (g >= 0 && gkey[b * S + i] > best) {
        best = gkey[b * S + i];
        bid = g;
      }
    }
    block_argmax(best, bid);
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
    const unsigned ballot = __ballot_sync(kFull, g);
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
  const int lane = tid & 31;
  for (int64_t j = tid >> 5; j < B; j += kWarps) {  // a warp per row: no 64-bit division
    const int64_t src = j < sh_J ? *reinterpret_cast<volatile int64_t*>(junction_rows + j) * k : -1;
    for (int64_t col = lane; col < k; col += 32) {
      const int64_t i = j * k + col;
      junction_ids[i] = src < 0 ? 0 : __ldcg(reinterpret_cast<const long long*>(topk_ids) + src + col);
      junction_logprobs[i] = src < 0 ? 0.0f : __ldcg(topk_logprobs + src + col);
    }
  }
}

// ------------------------------------------------------------------ host side

// How a launch cuts the rows: tiles per row cover V plus the largest alignment offset (7
// elements); slices of tiles_per_slice tiles, about kTargetCtas CTAs in all. A k above the
// buffer's kMaxBufK gives one tile per slice, so a slice never holds more than kk tokens.
struct Plan {
  int tiles, tiles_per_slice, S, kk;
};

Plan plan(int64_t B, int64_t V, int64_t k) {
  Plan p{};
  p.tiles = int((V + kVecMax - 1 + kTile - 1) / kTile);
  const int64_t want = B >= kTargetCtas ? 1 : kTargetCtas / B;  // slices per row wanted
  const int64_t slices = want < p.tiles ? want : p.tiles;
  p.tiles_per_slice = k > kMaxBufK ? 1 : int((p.tiles + slices - 1) / slices);
  p.S = (p.tiles + p.tiles_per_slice - 1) / p.tiles_per_slice;
  const int64_t len = int64_t(p.tiles_per_slice) * kTile;
  p.kk = int(k < len ? k : len);
  return p;
}

struct Layout {
  size_t part, flags, gkey, gid, cand, stage, counter, total;
};

size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

Layout layout(int64_t B, int64_t V, int64_t k) {
  const Plan p = plan(B, V, k);
  const size_t BS = size_t(B) * size_t(p.S);
  Layout l{};
  size_t o = 0;
  l.part = o;
  o = align256(o + sizeof(float4) * BS);
  l.flags = o;
  o = align256(o + sizeof(unsigned) * BS);
  l.gkey = o;
  o = align256(o + sizeof(float) * BS);
  l.gid = o;
  o = align256(o + sizeof(int32_t) * BS);
  l.cand = o;
  o = align256(o + sizeof(unsigned long long) * BS * size_t(p.kk));
  l.stage = o;
  o = align256(o + (k > kSortSmem ? sizeof(unsigned long long) * 2 * size_t(B) * size_t(k) : 0));
  l.counter = o;
  o = align256(o + sizeof(unsigned));
  l.total = o;
  return l;
}

}  // namespace

size_t junction_scan_cuda_workspace_bytes(int64_t B, int64_t V, int64_t k) {
  if (B <= 0 || V <= 0 || k < 1 || k > V) return 256;
  return layout(B, V, k).total;
}

cudaError_t junction_scan_cuda(const void* logits, const float* tau, const float* temperature, const int64_t* seed,
                               float* entropy, float* lse, bool* gate, int64_t* topk_ids, float* topk_logprobs,
                               int64_t* base_token, int64_t* junction_rows, int32_t* num_junctions,
                               int64_t* junction_ids, float* junction_logprobs, void* workspace, int64_t B,
                               int64_t V, int64_t row_stride, int64_t k, CudaScanDType dtype, bool entropy_topk,
                               bool sample_topk, cudaStream_t stream) {
  if (B <= 0) return cudaMemsetAsync(num_junctions, 0, sizeof(int32_t), stream);
  if (V <= 0 || V >= (int64_t(1) << 31) - kTile || k < 1 || k > V || row_stride < 0) return cudaErrorInvalidValue;
  const Plan p = plan(B, V, k);
  if (B * p.S > int64_t(0x7fffffff)) return cudaErrorInvalidValue;
  const Layout l = layout(B, V, k);
  char* w = static_cast<char*>(workspace);
  auto* part = reinterpret_cast<float4*>(w + l.part);
  auto* flags = reinterpret_cast<unsigned*>(w + l.flags);
  auto* gkey = reinterpret_cast<float*>(w + l.gkey);
  auto* gid = reinterpret_cast<int32_t*>(w + l.gid);
  auto* cand = reinterpret_cast<unsigned long long*>(w + l.cand);
  auto* stage = reinterpret_cast<unsigned long long*>(w + l.stage);
  auto* counter = reinterpret_cast<unsigned*>(w + l.counter);
  cudaError_t err = cudaMemsetAsync(counter, 0, sizeof(unsigned), stream);
  if (err != cudaSuccess) return err;
  const bool sample_full = !sample_topk;
  const dim3 grid1(unsigned(B * p.S));
#define SIA_SLICE_ARGS                                                                                     \
  temperature, seed, part, flags, gkey, gid, cand, V, row_stride, p.S, p.tiles_per_slice, p.tiles, p.kk, \
      sample_full
  switch (dtype) {
    case CudaScanDType::f32:
      slice_kernel<float><<<grid1, kThreads, 0, stream>>>(static_cast<const float*>(logits), SIA_SLICE_ARGS);
      break;
    case CudaScanDType::bf16:
      slice_kernel<__nv_bfloat16>
          <<<grid1, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(logits), SIA_SLICE_ARGS);
      break;
    case CudaScanDType::f16:
      slice_kernel<__half><<<grid1, kThreads, 0, stream>>>(static_cast<const __half*>(logits), SIA_SLICE_ARGS);
      break;
    default:
      return cudaErrorInvalidValue;
  }
#undef SIA_SLICE_ARGS
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  row_kernel<<<unsigned(B), kThreads, 0, stream>>>(part, flags, gkey, gid, cand, stage, counter, tau, temperature,
                                                   seed, entropy, lse, gate, topk_ids, topk_logprobs, base_token,
                                                   junction_rows, num_junctions, junction_ids, junction_logprobs, B,
                                                   k, p.S, p.kk, entropy_topk, sample_topk);
  return cudaGetLastError();
}

}  // namespace sia
