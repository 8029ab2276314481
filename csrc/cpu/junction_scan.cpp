// Junction scan on the CPU (docs/design.md §1-§2): one pass over each row of the logits.
//
// Layout of the work. The vocabulary is cut into fixed chunks of kChunk tokens. A chunk is
// read from memory once: a max pass pulls it into L1 (and records per-sub-block maxima), the
// exp pass then re-reads it from L1 and yields the chunk's partial (m, d = sum e^(z-m),
// s = sum e^(z-m)(z-m)). Chunk partials are folded in chunk order after the scan, so the sums
// never depend on which thread did which chunk. The running top-k is a min-heap whose root is
// the k-th best so far: a sub-block whose max does not beat it is skipped with one compare.
// Gumbel-max sampling (keys z + T g) over the full row uses Philox4x32-10 noise keyed by (seed,
// row, token), and a sub-block is skipped when even the largest possible noise cannot beat the
// best key. OpenMP runs over rows once the work pays for a thread (kMinWorkPerThread); when B
// is smaller than the thread count, each row is also split into vocabulary slices whose top-k
// and Gumbel winners are merged exactly afterwards.
#include "junction_scan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// The hot loops are written as 16 independent lanes so the compiler vectorises them without
// reassociating float sums (no -ffast-math). On x86-64 GCC/Clang also emit an AVX2+FMA+F16C
// clone (x86-64-v3), picked at load time: the default build stays portable.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(SIA_NO_CLONES)
#define SIA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SIA_CLONES
#endif
#define SIA_INLINE inline __attribute__((always_inline))
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors only cross always-inline helpers
#endif

namespace sia {
namespace {

constexpr int kChunk = 2048;  // f32 copy is 8 KB: chunk stays in L1 between its two passes
constexpr int kSub = 128;     // top-k / Gumbel skip granularity
constexpr int kSubs = kChunk / kSub;
constexpr int kLanes = 16;    // two AVX2 vectors of independent accumulators
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kLog2e = 1.44269504088896341f;
constexpr double kLn2 = 0.693147180559945309;
// Largest Gumbel noise the sampler can produce: E = -log(1 - w) >= 2^-65 gives g <= 45.06.
constexpr double kGumbelMax = 45.5;
// Logits per thread below which another thread costs more than it saves. bench/bench_threads.py
// measures 1 vs 2 threads (this 2-core Xeon VM, quiet): a forced split loses at [1, 4096],
// breaks even near 32k logits, wins 1.2x at 64k and 1.7-2x from 256k. So two threads start at
// 2 * 2^15 = 65,536 logits; a [6, 114] scan never opens a parallel region. On a busy machine a
// parallel region can wait a whole scheduler slice (~12 ms measured): run such machines at one
// thread (OMP_NUM_THREADS=1 / --threads 1), whatever the size.
constexpr int64_t kMinWorkPerThread = 1 << 15;

SIA_INLINE uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
SIA_INLINE float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Vectors through GCC/Clang vector extensions: 8 floats, lowered to one AVX2 register in the
// x86-64-v3 clone and to two SSE registers (or NEON pairs) elsewhere, so one source serves all.
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(32)));
constexpr int kW = 8;

template <class To, class From>
SIA_INLINE To bit_cast(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "size");
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}
SIA_INLINE vf splat(float x) { return vf{x, x, x, x, x, x, x, x}; }
SIA_INLINE vf loadu(const float* p) { return bit_cast<vf>(*reinterpret_cast<const float(*)[kW]>(p)); }
SIA_INLINE void storeu(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
SIA_INLINE vf vmax(vf a, vf x) { return x > a ? x : a; }  // NaN x keeps a, like the scalar "x > a"
SIA_INLINE float hmax(vf a) {
  float m = a[0];
  for (int l = 1; l < kW; ++l) m = a[l] > m ? a[l] : m;
  return m;
}
SIA_INLINE float hsum(vf a) {  // fixed order: results never depend on the caller
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// Scalar and vector views of the same formulas.
SIA_INLINE uint32_t as_bits(float x) { return f2u(x); }
SIA_INLINE vu as_bits(vf x) { return bit_cast<vu>(x); }
SIA_INLINE float as_float(uint32_t x) { return u2f(x); }
SIA_INLINE vf as_float(vu x) { return bit_cast<vf>(x); }
SIA_INLINE float to_float(uint32_t x) { return static_cast<float>(static_cast<int32_t>(x)); }  // as signed
SIA_INLINE vf to_float(vu x) { return __builtin_convertvector(reinterpret_cast<vi&>(x), vf); }
SIA_INLINE float to_float_u(uint32_t x) { return static_cast<float>(x); }  // as unsigned
SIA_INLINE vf to_float_u(vu x) { return __builtin_convertvector(x, vf); }
template <class T>
SIA_INLINE T bcast(float x);
template <>
SIA_INLINE float bcast<float>(float x) { return x; }
template <>
SIA_INLINE vf bcast<vf>(float x) { return splat(x); }
SIA_INLINE float sel(bool c, float a, float b) { return c ? a : b; }
SIA_INLINE vf sel(vi c, vf a, vf b) { return c ? a : b; }

// 2^t for t in [-127, 0] (or NaN, which propagates): t = n + f with |f| <= 1/2, 2^f from a
// degree-5 minimax polynomial with p(0) = 1 exactly (relative error 9.1e-8, about float
// epsilon; 2^0 = 1 keeps a one-hot row's entropy exactly 0), 2^n from the bits of the rounding
// "magic" sum, so the loop needs no float/int conversion. n = -127 gives the bits of 0.0: e = 0.
template <class T>
SIA_INLINE T exp2_small(T t) {
  const T r = t + 12582912.0f;  // 1.5 * 2^23: rounds t to the nearest integer
  const T n = r - 12582912.0f;
  const T f = t - n;
  T p = f * 1.3264728477224708e-3f + 9.671512991189957e-3f;
  p = p * f + 5.550733581185341e-2f;
  p = p * f + 2.4022242426872253e-1f;
  p = p * f + 6.931470036506653e-1f;
  p = p * f + 1.0f;
  return p * as_float((as_bits(r) - 0x4B400000u + 127u) << 23);
}

// log x for positive normal x: Cephes logf, relative error ~1e-7.
template <class T>
SIA_INLINE T log_pos(T x) {
  const auto b = as_bits(x);
  T e = to_float((b >> 23) - 126u);
  T m = as_float((b & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
  const auto small = m < 0.707106781186547524f;
  e = sel(small, e - 1.0f, e);
  m = sel(small, m + m - 1.0f, m - 1.0f);
  const T z = m * m;
  T y = m * 7.0376836292E-2f - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y = y + e * -2.12194440e-4f;
  y = y - z * 0.5f;
  return m + y + e * 0.693359375f;
}

// Philox4x32-10 (Salmon et al., SC'11): counter (c0..c3), key (k0, k1).
SIA_INLINE void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c[0];
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c[2];
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = uint32_t(p1);
    c[2] = n2;
    c[3] = uint32_t(p0);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// Gumbel noise from 64 random bits: w = (hi 2^32 + lo + 1/2) 2^-64 in (0, 1) (f32, relative
// precision 2^-24, smallest 2^-65), capped at 1 - 2^-24; E = -log(1 - w), from its series where
// 1 - w would lose w's low bits; g = -log E. E >= 2^-65 bounds g by 45.06 nats, so the Gumbel
// tail P(g > x) = 1 - exp(-e^-x) is reproduced to well under 1 % up to 40 nats.
template <class T, class U>
SIA_INLINE T gumbel_from_words(U hi, U lo) {
  T w = to_float_u(hi) * 0x1p-32f + (to_float_u(lo) * 0x1p-64f + 0x1p-65f);
  w = sel(w < 0x1.fffffep-1f, w, bcast<T>(0x1.fffffep-1f));
  const T series = w + w * w * (0.5f + w * (1.0f / 3.0f));  // w < 2^-10: error below w^4 / 4
  const T e = sel(w < 0x1p-10f, series, -log_pos(1.0f - w));
  return -log_pos(e);
}

// Noise words of token t in row b: Philox4x32-10, key (seed lo, seed hi), counter (t / 2, b, 0, 0);
// even t takes (hi, lo) = (r0, r1), odd t (r2, r3).
SIA_INLINE void noise_words(uint64_t seed, int64_t row, int64_t tok, uint32_t* hi, uint32_t* lo) {
  uint32_t c[4] = {uint32_t(uint64_t(tok) >> 1), uint32_t(uint64_t(row)), 0u, 0u};
  philox4x32_10(c, uint32_t(seed), uint32_t(seed >> 32));
  *hi = c[2 * (tok & 1)];
  *lo = c[2 * (tok & 1) + 1];
}

// The Gumbel-max key: one FMA where the CPU has one. Never overflows for finite z and t, and a t
// whose t * g is below half an ulp of z gives key = z (greedy). Both samplers use this and
// gumbel_from_words<vf>, so full and top-k sampling give a token the same key.
SIA_INLINE vf gumbel_key(vf z, vf t, vf g) { return z + t * g; }

// Philox words of token pairs p0 .. p0 + np (np a multiple of kW), stored by output word so the
// loop vectorises: tokens 2p and 2p + 1 take (r0[p], r1[p]) and (r2[p], r3[p]).
SIA_INLINE void philox_pairs(uint32_t p0, int np, int64_t row, uint64_t seed, uint32_t* __restrict r0,
                             uint32_t* __restrict r1, uint32_t* __restrict r2, uint32_t* __restrict r3) {
  for (int p = 0; p < np; ++p) {
    uint32_t c[4] = {p0 + uint32_t(p), uint32_t(uint64_t(row)), 0u, 0u};
    philox4x32_10(c, uint32_t(seed), uint32_t(seed >> 32));
    r0[p] = c[0];
    r1[p] = c[1];
    r2[p] = c[2];
    r3[p] = c[3];
  }
}

SIA_INLINE float bf16_to_f32(uint16_t h) { return u2f(uint32_t(h) << 16); }

SIA_INLINE float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  // Normals and subnormals: shift into f32 position, then rescale by 2^112 (exact).
  uint32_t bits = f2u(u2f(em << 13) * 0x1p112f);
  bits = em >= 0x7c00u ? ((em << 13) | 0x7f800000u) : bits;  // inf, NaN
  return u2f(bits | sign);
}

// Partials around r (the chunk max), in base 2: with t = (z - r) log2(e),
// d = sum 2^t = sum e^(z - r) and s2 = sum 2^t t, so s = sum e^(z - r)(z - r) = s2 ln 2.
struct ChunkStats {
  float m;   // chunk max (-inf if no value is larger)
  float r;   // reference point: m, or 0 when m = -inf
  float d;   // NaN iff the chunk holds a NaN or +inf; 0 for an all -inf chunk
  float s2;
};

// ------------------------------------------------------------------ hot loops (vectorised)

SIA_CLONES void convert_bf16(const uint16_t* __restrict src, int n, float* __restrict dst) {
  for (int i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

SIA_CLONES void convert_f16(const uint16_t* __restrict src, int n, float* __restrict dst) {
  typedef uint16_t vh __attribute__((vector_size(16)));
  int i = 0;
  for (; i + kW <= n; i += kW) {  // f16_to_f32 on 8 lanes (F16C's vcvtph2ps is not baseline x86-64)
    vh h;
    std::memcpy(&h, src + i, sizeof(h));
    const vu x = __builtin_convertvector(h, vu);
    const vu em = x & 0x7fffu;
    const vu bits = as_bits(as_float(em << 13) * 0x1p112f);
    const vu special = (em << 13) | 0x7f800000u;
    storeu(dst + i, as_float((em >= 0x7c00u ? special : bits) | ((x & 0x8000u) << 16)));
  }
  for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

// One chunk of n f32 values (n a multiple of 16, padded with -inf): per-sub-block maxima,
// then (m, ref, d, s) with two 8-wide accumulators each (independent lanes, fixed order).
// The exp pass runs from L1 and is compute-bound, so it prefetches the next chunk (next_bytes
// per token, 0 = none): the memory system keeps streaming while the exps are computed.
SIA_CLONES void chunk_pass(const float* __restrict z, int n, ChunkStats* __restrict out, float* __restrict sbmax,
                           const char* next, int next_bytes) {
  float m = -kInf;
  for (int sb = 0; sb * kSub < n; ++sb) {
    const int end = std::min(n, (sb + 1) * kSub);
    vf a = splat(-kInf), b = splat(-kInf);
    for (int i = sb * kSub; i < end; i += 2 * kW) {
      a = vmax(a, loadu(z + i));
      b = vmax(b, loadu(z + i + kW));
    }
    const float bm = hmax(vmax(a, b));
    sbmax[sb] = bm;
    m = bm > m ? bm : m;
  }
  // t = (z - r) log2(e): subtracting first keeps the float log2(e) rounding relative to z - r,
  // not to z (huge logits). t below -127 is clamped there, where e = 0 exactly (a -inf logit adds
  // nothing, and 0 * t never NaNs; weights under 2^-126 of the chunk max are dropped, as in f32).
  // "lo > t ? lo : t" keeps a NaN t, so a NaN logit poisons d and the row is flagged.
  const float r = m == -kInf ? 0.0f : m;
  const vf vr = splat(r), l2e = splat(kLog2e), lo = splat(-127.0f), zero = splat(0.0f);
  vf d0 = zero, d1 = zero, s0 = zero, s1 = zero;
  for (int i = 0; i < n; i += 2 * kW) {
    if (next_bytes) __builtin_prefetch(next + i * next_bytes);
    vf t0 = (loadu(z + i) - vr) * l2e, t1 = (loadu(z + i + kW) - vr) * l2e;
    t0 = lo > t0 ? lo : t0;
    t1 = lo > t1 ? lo : t1;
    const vf e0 = exp2_small(t0), e1 = exp2_small(t1);
    d0 += e0;
    d1 += e1;
    s0 += e0 * t0;
    s1 += e1 * t1;
  }
  float d = hsum(d0) + hsum(d1), s2 = hsum(s0) + hsum(s1);
  if (m == -kInf && d == d) d = s2 = 0.0f;  // no finite logit (and no NaN) in this chunk
  *out = ChunkStats{m, r, d, s2};
}

// Gumbel-max keys z + T G(seed, row, token) for tokens tok0 .. tok0 + n (tok0 even, n <= kSub);
// z and keys hold n rounded up to 16 (padded) entries. Returns false, with no keys written, when
// no token's hi word is below hi_bar (then none can win: see hi_bar); the logs are skipped then.
SIA_CLONES bool gumbel_keys(const float* __restrict z, int n, int64_t tok0, int64_t row, uint64_t seed, float t,
                            uint64_t hi_bar, float* __restrict keys) {
  alignas(32) uint32_t r0[kSub / 2], r1[kSub / 2], r2[kSub / 2], r3[kSub / 2];
  alignas(32) float g[kSub];
  const int np = ((n + 15) & ~15) / 2;
  philox_pairs(uint32_t(uint64_t(tok0) >> 1), np, row, seed, r0, r1, r2, r3);
  uint32_t lowest = 0xffffffffu;
  for (int p = 0; p < np; ++p) lowest = std::min(lowest, std::min(r0[p], r2[p]));
  if (lowest >= hi_bar) return false;
  for (int p = 0; p < np; p += kW) {
    vu a, b, c, d;
    std::memcpy(&a, r0 + p, sizeof(a));
    std::memcpy(&b, r1 + p, sizeof(b));
    std::memcpy(&c, r2 + p, sizeof(c));
    std::memcpy(&d, r3 + p, sizeof(d));
    const vf even = gumbel_from_words<vf>(a, b), odd = gumbel_from_words<vf>(c, d);
    for (int i = 0; i < kW; ++i) {
      g[2 * (p + i)] = even[i];
      g[2 * (p + i) + 1] = odd[i];
    }
  }
  const vf vt = splat(t);
  for (int i = 0; i < 2 * np; i += kW) storeu(keys + i, gumbel_key(loadu(z + i), vt, loadu(g + i)));
  return true;
}

// The same keys for kW candidates (top-k sampling), from their tokens' noise words.
SIA_CLONES void candidate_keys(const float* __restrict z, const uint32_t* __restrict hi,
                               const uint32_t* __restrict lo, float t, float* __restrict keys) {
  vu h, l;
  std::memcpy(&h, hi, sizeof(h));
  std::memcpy(&l, lo, sizeof(l));
  storeu(keys, gumbel_key(loadu(z), splat(t), gumbel_from_words<vf>(h, l)));
}

// A token at logit z <= zmax beats the key `best` only if g > x = (best - zmax) / t, that is
// w < 1 - exp(-e^-x), which needs its hi word below about 2^32 (1 - exp(-e^-x)). The bar is
// generous (slack for f32 rounding of the key and of g); 2^32 means "no pruning".
uint64_t hi_bar(float best, float zmax, float t) {
  const double gap = double(best) - double(zmax) - (std::fabs(double(best)) + std::fabs(double(zmax))) * 0x1p-20;
  const double x = gap / double(t) - 1e-2;
  if (!(x > -2.0)) return uint64_t(1) << 32;  // -inf best, or the bar is above 1 - exp(-e^2)
  const double w = -std::expm1(-std::exp(-x));
  return std::min<uint64_t>(uint64_t(1) << 32, uint64_t(w * 0x1p32 * (1 + 0x1p-16)) + 2);
}

// ------------------------------------------------------------------ top-k heap

struct Entry {
  float v;
  int64_t id;
};

// a ranks before b: larger value, ties to the lower token id.
SIA_INLINE bool better(const Entry& a, const Entry& b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

// Min-heap of the best k entries seen; the root is the k-th best (the bar to beat).
struct TopK {
  Entry* h;
  int64_t k;
  int64_t n = 0;

  void sift_down(int64_t i) {
    const Entry x = h[i];
    for (;;) {
      int64_t c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && better(h[c], h[c + 1])) ++c;  // the worse child
      if (!better(x, h[c])) break;
      h[i] = h[c];
      i = c;
    }
    h[i] = x;
  }
  void push(Entry x) {  // n < k
    int64_t i = n++;
    while (i > 0) {
      const int64_t p = (i - 1) / 2;
      if (!better(h[p], x)) break;
      h[i] = h[p];
      i = p;
    }
    h[i] = x;
  }
  void offer(Entry x) {
    if (x.v != x.v) x.v = -kInf;  // NaN rows raise later; keep the order total meanwhile
    if (n < k) {
      push(x);
    } else if (better(x, h[0])) {
      h[0] = x;
      sift_down(0);
    }
  }
  // Tokens arrive in ascending id, so within a scan "better than the root" is "v > root.v".
  void scan(const float* z, int len, int64_t tok0) {
    int i = 0;
    for (; i < len && n < k; ++i) offer(Entry{z[i], tok0 + i});
    if (i == len) return;
    float bar = h[0].v;
    for (; i < len; ++i) {
      if (z[i] > bar) {
        h[0] = Entry{z[i], tok0 + i};
        sift_down(0);
        bar = h[0].v;
      }
    }
  }
  bool full() const { return n == k; }
  float bar() const { return h[0].v; }
};

// What one task (a row, or a vocabulary slice of a row) leaves behind besides chunk stats.
struct TaskOut {
  int64_t best_id = -1;  // Gumbel-max winner (full-row sampling), -1 if none
  float best_key = -kInf;
};

struct Scratch {
  std::vector<float> buf = std::vector<float>(kChunk);
  std::vector<float> keys = std::vector<float>(kSub);
  std::vector<Entry> merge;
};

struct Problem {
  const void* logits;
  int64_t B, V, row_stride, k, nch;
  ScanDType dtype;
  bool entropy_topk, sample_topk;
  uint64_t seed;
  const float* tau;
  const float* temperature;
  ChunkStats* stats;  // [B, nch]
};

// Scan chunks [c0, c1) of row b: chunk stats, top-k into heap, Gumbel winner into out.
void scan_range(const Problem& P, int64_t b, int64_t c0, int64_t c1, TopK& heap, TaskOut& out, Scratch& S) {
  const float t = P.temperature[b];
  const bool sample_full = !P.sample_topk && t > 0.0f;
  const double reach = double(t) * kGumbelMax;  // no key exceeds its logit by more
  float sbmax[kSubs];
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t tok0 = c * kChunk;
    const int n = static_cast<int>(std::min<int64_t>(kChunk, P.V - tok0));
    const float* z;
    if (P.dtype == ScanDType::f32) {
      z = static_cast<const float*>(P.logits) + b * P.row_stride + tok0;
    } else {
      const uint16_t* src = static_cast<const uint16_t*>(P.logits) + b * P.row_stride + tok0;
      if (P.dtype == ScanDType::bf16)
        convert_bf16(src, n, S.buf.data());
      else
        convert_f16(src, n, S.buf.data());
      z = S.buf.data();
    }
    const int n16 = (n + 15) & ~15;
    if (n16 != n) {  // the row's last chunk: pad with -inf (adds nothing to m, d, s)
      if (z != S.buf.data()) std::copy(z, z + n, S.buf.data());
      std::fill(S.buf.data() + n, S.buf.data() + n16, -kInf);
      z = S.buf.data();
    }
    const int esz = P.dtype == ScanDType::f32 ? 4 : 2;
    const char* next = static_cast<const char*>(P.logits) + (b * P.row_stride + tok0 + kChunk) * esz;
    chunk_pass(z, n16, &P.stats[b * P.nch + c], sbmax, next, c + 1 < c1 ? esz : 0);
    for (int sb = 0; sb * kSub < n; ++sb) {
      const int off = sb * kSub;
      const int len = std::min(kSub, n - off);
      if (!heap.full() || sbmax[sb] > heap.bar()) heap.scan(z + off, len, tok0 + off);
      // Can this sub-block still win? Its best key is at most sbmax + T gmax (plus f32 rounding).
      const double reach_sb = double(sbmax[sb]) + reach;
      if (sample_full && sbmax[sb] > -kInf && reach_sb + std::fabs(reach_sb) * 0x1p-20 > double(out.best_key) &&
          gumbel_keys(z + off, len, tok0 + off, b, P.seed, t, hi_bar(out.best_key, sbmax[sb], t), S.keys.data())) {
        for (int i = 0; i < len; ++i) {
          if (S.keys[i] > out.best_key) {
            out.best_key = S.keys[i];
            out.best_id = tok0 + off + i;
          }
        }
      }
    }
  }
}

// Scalar slow path for rows whose sums went non-finite: NaN beats +inf beats "no finite logit".
float classify_bad_row(const Problem& P, int64_t b) {
  bool pinf = false;
  for (int64_t i = 0; i < P.V; ++i) {
    float x;
    const int64_t off = b * P.row_stride + i;
    if (P.dtype == ScanDType::f32)
      x = static_cast<const float*>(P.logits)[off];
    else if (P.dtype == ScanDType::bf16)
      x = bf16_to_f32(static_cast<const uint16_t*>(P.logits)[off]);
    else
      x = f16_to_f32(static_cast<const uint16_t*>(P.logits)[off]);
    if (x != x) return std::numeric_limits<float>::quiet_NaN();
    if (x == kInf) pinf = true;
  }
  return pinf ? kInf : std::numeric_limits<float>::quiet_NaN();
}

struct Outputs {
  float* entropy;
  float* lse;
  bool* gate;
  int64_t* topk_ids;
  float* topk_logprobs;
  int64_t* base_token;
};

// Fold row b's chunk stats in chunk order, then write its outputs from the sorted top-k.
void finish_row(const Problem& P, int64_t b, const Entry* top, const TaskOut& win, const Outputs& O) {
  const ChunkStats* cs = P.stats + b * P.nch;
  double M = -INFINITY;
  bool bad = false;
  for (int64_t c = 0; c < P.nch; ++c) {
    M = std::max(M, double(cs[c].m));
    bad |= !std::isfinite(cs[c].d);
  }
  double lse, H_full = NAN;
  if (bad) {
    lse = classify_bad_row(P, b);
  } else if (M == -INFINITY) {
    lse = -INFINITY;
  } else {
    double d = 0.0, s = 0.0;
    for (int64_t c = 0; c < P.nch; ++c) {
      if (cs[c].d == 0.0f) continue;
      const double shift = double(cs[c].r) - M;  // <= 0
      const double a = std::exp(shift);
      d += a * cs[c].d;
      s += a * (double(cs[c].s2) * kLn2 + double(cs[c].d) * shift);
    }
    lse = M + std::log(d);
    H_full = std::log(d) - s / d;
  }
  const int64_t k = P.k;
  double H;
  if (P.entropy_topk) {
    const double m0 = top[0].v;
    double d = 0.0, s = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      const double x = double(top[j].v) - m0;
      const double e = std::exp(x);
      d += e;
      s += e > 0.0 ? e * x : 0.0;
    }
    H = std::isfinite(m0) ? std::log(d) - s / d : NAN;
  } else {
    H = H_full;
  }
  if (!std::isfinite(lse)) H = NAN;
  const float Hf = static_cast<float>(H);
  O.entropy[b] = Hf;
  O.lse[b] = static_cast<float>(lse);
  O.gate[b] = Hf > P.tau[b];
  for (int64_t j = 0; j < k; ++j) {
    O.topk_ids[b * k + j] = top[j].id;
    O.topk_logprobs[b * k + j] = static_cast<float>(double(top[j].v) - lse);
  }
  // Base token: greedy (T = 0) is the first candidate; else Gumbel-max.
  const float t = P.temperature[b];
  int64_t base = top[0].id;
  if (t > 0.0f) {
    if (P.sample_topk) {
      float best = -kInf;
      for (int64_t j0 = 0; j0 < k; j0 += kW) {
        alignas(32) float z[kW], keys[kW];
        alignas(32) uint32_t hi[kW], lo[kW];
        for (int i = 0; i < kW; ++i) {
          const bool in = j0 + i < k;
          z[i] = in ? top[j0 + i].v : -kInf;  // padding: key -inf, never drawn
          hi[i] = lo[i] = 0;
          if (in) noise_words(P.seed, b, top[j0 + i].id, &hi[i], &lo[i]);
        }
        candidate_keys(z, hi, lo, t, keys);
        for (int i = 0; i < kW && j0 + i < k; ++i) {  // candidate order: ties to the better candidate
          if (keys[i] > best) {
            best = keys[i];
            base = top[j0 + i].id;
          }
        }
      }
    } else if (win.best_id >= 0) {
      base = win.best_id;
    }
  }
  O.base_token[b] = base;
}

void sort_top(Entry* e, int64_t n, int64_t k) {
  std::partial_sort(e, e + k, e + n, [](const Entry& a, const Entry& b) { return better(a, b); });
}

int num_threads_default() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

int junction_scan_cpu(const void* logits, const float* tau, const float* temperature, float* entropy, float* lse,
                      bool* gate, int64_t* topk_ids, float* topk_logprobs, int64_t* base_token,
                      int64_t* junction_rows, int32_t* num_junctions, int64_t* junction_ids,
                      float* junction_logprobs, int64_t B, int64_t V, int64_t row_stride, int64_t k,
                      ScanDType dtype, bool entropy_topk, bool sample_topk, uint64_t seed, int num_threads,
                      int64_t min_work_per_thread) {
  // Threads: as many as asked for, but no more than the work pays for (see kMinWorkPerThread).
  const int64_t per_thread = min_work_per_thread > 0 ? min_work_per_thread : kMinWorkPerThread;
  const int64_t asked = num_threads > 0 ? num_threads : num_threads_default();
  const int nthr = static_cast<int>(std::max<int64_t>(1, std::min(asked, B * V / per_thread)));
  const int64_t nch = (V + kChunk - 1) / kChunk;
  std::vector<ChunkStats> stats(static_cast<size_t>(B * nch));
  const Problem P{logits, B, V, row_stride, k, nch, dtype, entropy_topk, sample_topk, seed, tau, temperature,
                  stats.data()};
  const Outputs O{entropy, lse, gate, topk_ids, topk_logprobs, base_token};
  // Slices per row: enough (row, slice) tasks to feed every thread when B is small.
  const int64_t slices = B >= nthr ? 1 : std::min<int64_t>(nch, (nthr + B - 1) / B);
  int ran = 1;
  if (slices == 1) {
#pragma omp parallel num_threads(nthr) if (nthr > 1)
    {
#ifdef _OPENMP
#pragma omp single
      ran = omp_get_num_threads();
#endif
      Scratch S;
      std::vector<Entry> heap_mem(static_cast<size_t>(k));
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < B; ++b) {
        TopK heap{heap_mem.data(), k};
        TaskOut win;
        scan_range(P, b, 0, nch, heap, win, S);
        sort_top(heap_mem.data(), k, k);
        finish_row(P, b, heap_mem.data(), win, O);
      }
    }
  } else {
    const int64_t ntask = B * slices;
    std::vector<Entry> heaps(static_cast<size_t>(ntask * k));
    std::vector<int64_t> counts(static_cast<size_t>(ntask));
    std::vector<TaskOut> wins(static_cast<size_t>(ntask));
#pragma omp parallel num_threads(nthr) if (nthr > 1)
    {
#ifdef _OPENMP
#pragma omp single
      ran = omp_get_num_threads();
#endif
      Scratch S;
#pragma omp for schedule(static, 1)
      for (int64_t t = 0; t < ntask; ++t) {
        const int64_t b = t / slices, sl = t % slices;
        TopK heap{heaps.data() + t * k, k};
        scan_range(P, b, sl * nch / slices, (sl + 1) * nch / slices, heap, wins[t], S);
        counts[t] = heap.n;
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < B; ++b) {
        S.merge.clear();
        TaskOut win;
        for (int64_t sl = 0; sl < slices; ++sl) {
          const int64_t t = b * slices + sl;
          S.merge.insert(S.merge.end(), heaps.begin() + t * k, heaps.begin() + t * k + counts[t]);
          // Slices hold ascending token ranges: strict ">" keeps the lower id on ties.
          if (wins[t].best_id >= 0 && (win.best_id < 0 || wins[t].best_key > win.best_key)) win = wins[t];
        }
        sort_top(S.merge.data(), static_cast<int64_t>(S.merge.size()), k);
        finish_row(P, b, S.merge.data(), win, O);
      }
    }
  }
  // Compaction in row order (deterministic); entries past J are zero.
  int64_t J = 0;
  for (int64_t b = 0; b < B; ++b) {
    if (!gate[b]) continue;
    junction_rows[J] = b;
    std::memcpy(junction_ids + J * k, topk_ids + b * k, sizeof(int64_t) * k);
    std::memcpy(junction_logprobs + J * k, topk_logprobs + b * k, sizeof(float) * k);
    ++J;
  }
  std::fill(junction_rows + J, junction_rows + B, int64_t(0));
  std::fill(junction_ids + J * k, junction_ids + B * k, int64_t(0));
  std::fill(junction_logprobs + J * k, junction_logprobs + B * k, 0.0f);
  num_junctions[0] = static_cast<int32_t>(J);
  return ran;
}

}  // namespace sia
