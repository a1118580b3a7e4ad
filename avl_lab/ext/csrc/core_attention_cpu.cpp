// Core-cache decode attention on CPU: softmax(q K[a]^T * scale) V[a] over the rows `a` of the
// cache named by `active`, reading those rows in place (no K[a]/V[a] copies).
//
// Specification: avl_lab/ext/reference.py::core_attention_ref. Layout: q [B, Hq, 1, D] (made
// contiguous by the caller), k/v [B, Hkv, N, D] with any strides but a unit stride on D (so a
// slice of a larger buffer or a token-major [B, N, Hkv, D] buffer viewed as [B, Hkv, N, D] is
// read in place), active [B, n] (rows shared by all kv heads) or [B, Hkv, n] (rows per kv head)
// int64 with -1 padding (compact indices, or an index as wide as the layer: the row number
// where a row is active, -1 elsewhere), or a bool mask as wide as the layer (row j where set:
// what the engine's decode step hands over, so that it builds no index).
//
// Work is split into units (batch row, kv heads [h0, h1), row split) run in ONE parallel
// region: a unit handles all G = Hq / Hkv query heads of its kv heads, so it owns complete
// softmaxes and writes `out` and `probs` itself; row splits (and a merge after the region) only
// happen when units are fewer than threads. A token-major cache gives a unit a contiguous
// range of heads (as many ranges as threads), so a selected token's rows of those heads are one
// run: shared rows are read in blocks of tokens (kTokenBlock), and so are rows per kv head of
// a wide index (entry j is slot j or -1) whose heads hold nearly the same slots (as beside
// TextH2O's per-head text windows): over the slots some head holds, each head's others masked
// out of its softmax. Otherwise (head-major caches, other per-head indices) each head's rows
// are read in turn, one slab per head on a head-major cache.
//
// Inside a unit: the -1 entries are dropped first (a list of the valid positions, so a wide
// index costs one scan, not row reads), then pass 1 reads the K rows into scores, the scores
// become exponentials (vectorised exp), and pass 2 reads the V rows into float accumulators
// (fp32 accumulation for every dtype). MHA (G = 1) is memory-bound: one dot per row as it
// arrives. GQA (G > 1) is compute-bound (G * D FMAs per row and pass): a K row is loaded (and
// converted from bf16/fp16) once for up to 8 query heads of its group, R = W / GB rows at a
// time with the query vectors held in registers, and the R * GB accumulators are reduced by
// one transpose-and-add tree (~3 instructions per dot instead of a full horizontal reduction
// each); the V pass keeps the group's accumulators in registers over blocks of rows.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__F16C__)
#include <immintrin.h>
#define AVL_SIMD 16
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define AVL_SIMD 8
#else
#define AVL_SIMD 0
#endif

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Software prefetch distances: head order, rows ahead (512 B rows: 8 KiB; other distances and
// hints did no better, benchmarks/README.md "Per-head rows"); GQA token order, bytes ahead.
constexpr int64_t kPrefetchRows = 16;
constexpr int64_t kPrefetchBytes = 16384;
constexpr int64_t kMinRowsPerSplit = 128;
// Token-major shared rows, MHA: blocks of 8 tokens, head by head inside a block, so 8 token runs
// stream at once (the hardware prefetcher follows each) and software prefetch runs one block
// ahead (measured 1.1-1.2x the bandwidth limit against 1.3-1.4x reading token after token).
constexpr int64_t kTokenBlock = 8;
// Rows per kv head of a wide index are read over the union of the heads' slots when it exceeds
// the most any head holds by at most max(kAlignSlack, most / kAlignShare): the engine's
// aligned() (engine/cache.py, SLACK and SLACK_SHARE), under which it keeps such slots shared.
constexpr int64_t kAlignSlack = 16;
constexpr int64_t kAlignShare = 16;
constexpr int64_t kVBlock = 32;            // GQA V pass: rows per register-accumulator block
// Below this many K+V bytes a call runs on the calling thread: waking a sleeping OpenMP
// worker (OMP_WAIT_POLICY=PASSIVE) costs ~15 us, what one core reads in ~300 KiB.
constexpr int64_t kSerialBytes = 256 * 1024;

inline void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  // Locality 2 (prefetcht1): measured ~30% faster than t0 on these machines for random
  // 256-512 B rows, as the lines wait in L2 instead of competing for L1 fill buffers.
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 2);
}

// --- SIMD: W floats per vector; loads convert bf16/fp16 to float ------------------------------
#if AVL_SIMD == 16
constexpr int W = 16;
using vf = __m512;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vset(float x) { return _mm512_set1_ps(x); }
inline vf vld(const float* p) { return _mm512_loadu_ps(p); }
inline vf vld(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline vf vld(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline void vst(float* p, vf x) { _mm512_storeu_ps(p, x); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vfnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline float vsum(vf x) { return _mm512_reduce_add_ps(x); }
inline float vhmax(vf x) { return _mm512_reduce_max_ps(x); }
inline vf vround(vf x) {
  return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline vf vpow2n(vf p, vf n) { return _mm512_scalef_ps(p, n); }  // p * 2^n
inline vf vzero_below(vf y, vf x, float lo) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, vset(lo), _CMP_GE_OQ), y);
}
// Lane p of the result = the sum of the lanes of a[p] (p < C <= 16): a transpose-and-add tree
// (8 + 4 + 2 + 1 shuffle pairs, ~45 instructions for 16 sums). Vector p enters at slot(p), the
// position the tree's interleaving brings back to lane p.
constexpr int hsum_slot(int p) {
  constexpr int part[4] = {0, 2, 1, 3}, quarter[4] = {0, 8, 4, 12};
  return part[p & 3] + quarter[p >> 2];
}
template <int C>
__attribute__((always_inline)) inline vf hsum_lanes(const vf* a) {
  vf s[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) s[i] = vzero();
#pragma GCC unroll 16
  for (int p = 0; p < C; ++p) s[hsum_slot(p)] = a[p];
  vf w[8], x[4], y[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)  // 256-bit halves: [s_i folded | s_i+8 folded]
    w[i] = vadd(_mm512_shuffle_f32x4(s[i], s[i + 8], 0x44), _mm512_shuffle_f32x4(s[i], s[i + 8], 0xEE));
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)  // 128-bit quarters
    x[i] = vadd(_mm512_shuffle_f32x4(w[i], w[i + 4], 0x88), _mm512_shuffle_f32x4(w[i], w[i + 4], 0xDD));
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)  // pairs within quarters
    y[i] = vadd(_mm512_shuffle_ps(x[i], x[i + 2], 0x44), _mm512_shuffle_ps(x[i], x[i + 2], 0xEE));
  return vadd(_mm512_shuffle_ps(y[0], y[1], 0x88), _mm512_shuffle_ps(y[0], y[1], 0xDD));
}
#elif AVL_SIMD == 8
constexpr int W = 8;
using vf = __m256;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vset(float x) { return _mm256_set1_ps(x); }
inline vf vld(const float* p) { return _mm256_loadu_ps(p); }
inline vf vld(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline vf vld(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline void vst(float* p, vf x) { _mm256_storeu_ps(p, x); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vfnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline float vsum(vf x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float vhmax(vf x) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline vf vround(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf vpow2n(vf p, vf n) {  // n in [-126, 127]
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
inline vf vzero_below(vf y, vf x, float lo) {
  return _mm256_and_ps(y, _mm256_cmp_ps(x, vset(lo), _CMP_GE_OQ));
}
// Lane p of the result = the sum of the lanes of a[p] (p < C <= 8): a horizontal-add tree.
template <int C>
__attribute__((always_inline)) inline vf hsum_lanes(const vf* a) {
  vf s[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) s[i] = i < C ? a[i] : vzero();
  const vf u0 = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
  const vf u1 = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
  return vadd(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#else
constexpr int W = 1;
#endif

#if AVL_SIMD
// exp(x) for x <= 0 (scores minus their max): Cody-Waite reduction x = n ln2 + r, degree-7
// Taylor polynomial on |r| <= ln2 / 2 (relative error < 1e-7); 0 below -87 and for -inf.
inline vf vexp(vf x) {
  const vf xc = vmax(x, vset(-87.f));
  const vf t = vround(vmul(xc, vset(1.44269504088896341f)));
  vf r = vfnma(t, vset(0.693359375f), xc);  // x - t ln2, ln2 split in two
  r = vfnma(t, vset(-2.12194440e-4f), r);
  vf p = vset(1.f / 5040);
  p = vfma(p, r, vset(1.f / 720));
  p = vfma(p, r, vset(1.f / 120));
  p = vfma(p, r, vset(1.f / 24));
  p = vfma(p, r, vset(1.f / 6));
  p = vfma(p, r, vset(0.5f));
  p = vfma(p, r, vset(1.f));
  p = vfma(p, r, vset(1.f));
  return vzero_below(vpow2n(p, t), x, -87.f);
}
#endif

// max of s[0, n) (-inf when n = 0); vectorised (a scalar max is a 3-cycle dependency chain).
inline float max_of(const float* s, int64_t n) {
  float m = kNegInf;
  int64_t j = 0;
#if AVL_SIMD
  vf mv = vset(kNegInf);
  for (; j + W <= n; j += W) mv = vmax(mv, vld(s + j));
  m = vhmax(mv);
#endif
  for (; j < n; ++j) m = std::max(m, s[j]);
  return m;
}

// s[j] = exp(s[j] - m) for j in [0, n), returning the sum (m finite).
inline float exp_shift_sum(float* s, int64_t n, float m) {
  float l = 0.f;
  int64_t j = 0;
#if AVL_SIMD
  const vf mv = vset(m);
  vf acc = vzero();
  for (; j + W <= n; j += W) {
    const vf e = vexp(vsub(vld(s + j), mv));
    vst(s + j, e);
    acc = vadd(acc, e);
  }
  l = vsum(acc);
#endif
  for (; j < n; ++j) {
    const float e = s[j] - m < -87.f ? 0.f : std::exp(s[j] - m);
    s[j] = e;
    l += e;
  }
  return l;
}

// Row kernels. NV > 0: D = NV * W fixed at compile time (q / acc stay in registers);
// NV == 0: any D with D % W == 0; NV < 0: scalar.
template <int NV, typename T>
inline float dot(const float* q, const T* r, int64_t D) {
#if AVL_SIMD
  if constexpr (NV >= 0) {
    vf a0 = vzero(), a1 = vzero();  // two chains hide the FMA latency
    const int64_t nv = NV > 0 ? NV : D / W;
#pragma GCC unroll 8
    for (int64_t i = 0; i + 1 < nv; i += 2) {
      a0 = vfma(vld(q + i * W), vld(r + i * W), a0);
      a1 = vfma(vld(q + (i + 1) * W), vld(r + (i + 1) * W), a1);
    }
    if (nv % 2) a0 = vfma(vld(q + (nv - 1) * W), vld(r + (nv - 1) * W), a0);
    return vsum(vadd(a0, a1));
  }
#endif
  float a = 0.f;
  for (int64_t d = 0; d < D; ++d) a += q[d] * static_cast<float>(r[d]);
  return a;
}

template <int NV, typename T>
inline void axpy(float p, const T* r, float* acc, int64_t D) {  // acc += p * r
#if AVL_SIMD
  if constexpr (NV >= 0) {
    const vf pv = vset(p);
    const int64_t nv = NV > 0 ? NV : D / W;
#pragma GCC unroll 8
    for (int64_t i = 0; i < nv; ++i) vst(acc + i * W, vfma(pv, vld(r + i * W), vld(acc + i * W)));
    return;
  }
#endif
  for (int64_t d = 0; d < D; ++d) acc[d] += p * static_cast<float>(r[d]);
}

constexpr int kBatch = W;  // GQA pass 1: rows per batch of scores

// GQA scores (pass 1): nr <= kBatch rows of one kv head against its G query vectors at
// q + g * D; s[g * ss + r] = q_g . rows[r]. A row is loaded (and converted) once for GB <= 8
// query heads, R = W / GB rows at a time (R * GB accumulators reduced by one tree).
constexpr int kMaxGB = 8;
#if AVL_SIMD
template <int NV, int GB, typename T>
__attribute__((always_inline)) inline void group_dots(const float* q, const T* const* rows, int64_t nr, int64_t D, float* s,
                       int64_t ss) {
  constexpr int R = W / GB > 0 ? W / GB : 1;
  const int64_t nv = NV > 0 ? NV : D / W;
  for (int64_t r0 = 0; r0 < nr; r0 += R) {
    const T* rr[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) rr[r] = rows[r0 + r < nr ? r0 + r : r0];  // tail: repeat a row
    vf acc[R * GB];
#pragma GCC unroll 16
    for (int a = 0; a < R * GB; ++a) acc[a] = vzero();
    // Per step of W dims: the R row vectors, then each query vector once for all R rows
    // (R * GB + R + 1 registers; the steps are not unrolled, which would spill).
#pragma GCC unroll 1
    for (int64_t i = 0; i < nv; ++i) {
      vf x[R];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) x[r] = vld(rr[r] + i * W);
#pragma GCC unroll 8
      for (int g = 0; g < GB; ++g) {
        vf qv = vld(q + g * D + i * W);
        asm("" : "+v"(qv));  // keep it in a register: folded into each FMA it is loaded R times
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) acc[r * GB + g] = vfma(qv, x[r], acc[r * GB + g]);
      }
    }
    alignas(64) float t[W];
    vst(t, hsum_lanes<R * GB>(acc));
    for (int64_t r = 0; r < std::min<int64_t>(R, nr - r0); ++r)
#pragma GCC unroll 8
      for (int g = 0; g < GB; ++g) s[g * ss + r0 + r] = t[r * GB + g];
  }
}
#endif

template <int NV, typename T>
inline void group_scores(const float* q, const T* const* rows, int64_t nr, int64_t G, int64_t D,
                         float* s, int64_t ss) {
#if AVL_SIMD
  if constexpr (NV >= 0) {
    for (int64_t g0 = 0; g0 < G; g0 += kMaxGB) {
      const float* qg = q + g0 * D;
      float* sg = s + g0 * ss;
      switch (std::min<int64_t>(kMaxGB, G - g0)) {
        case 1: group_dots<NV, 1>(qg, rows, nr, D, sg, ss); break;
        case 2: group_dots<NV, 2>(qg, rows, nr, D, sg, ss); break;
        case 3: group_dots<NV, 3>(qg, rows, nr, D, sg, ss); break;
        case 4: group_dots<NV, 4>(qg, rows, nr, D, sg, ss); break;
        case 5: group_dots<NV, 5>(qg, rows, nr, D, sg, ss); break;
        case 6: group_dots<NV, 6>(qg, rows, nr, D, sg, ss); break;
        case 7: group_dots<NV, 7>(qg, rows, nr, D, sg, ss); break;
        default: group_dots<NV, 8>(qg, rows, nr, D, sg, ss); break;
      }
    }
    return;
  }
#endif
  for (int64_t g = 0; g < G; ++g)
    for (int64_t r = 0; r < nr; ++r) s[g * ss + r] = dot<NV>(q + g * D, rows[r], D);
}

// GQA V pass: acc_g += p_g[j] * V[row j] for a block of rows, acc (stride D per query head)
// kept in registers kDV vectors of D at a time for up to kMaxGBV query heads while the block's
// rows stream through (kMaxGBV * kDV accumulators + kDV row vectors + a broadcast fit the 32
// (AVX-512) / 16 (AVX2) registers).
#if AVL_SIMD
constexpr int kDV = AVL_SIMD == 16 ? 4 : 1;
constexpr int kMaxGBV = AVL_SIMD == 16 ? 6 : 8;

template <int NV, int GB, typename T>
inline void vblock(const T* const* rows, int64_t nrows, const float* p, int64_t pstride,
                   float* acc, int64_t D) {
  static_assert(NV % kDV == 0, "V sweep width must divide D");
  for (int dc = 0; dc < NV; dc += kDV) {
    vf a[GB][kDV];
#pragma GCC unroll 8
    for (int g = 0; g < GB; ++g) {
#pragma GCC unroll 8
      for (int u = 0; u < kDV; ++u) a[g][u] = vld(acc + g * D + (dc + u) * W);
    }
    for (int64_t j = 0; j < nrows; ++j) {
      vf r[kDV];
#pragma GCC unroll 8
      for (int u = 0; u < kDV; ++u) r[u] = vld(rows[j] + (dc + u) * W);
#pragma GCC unroll 8
      for (int g = 0; g < GB; ++g) {
        const vf pv = vset(p[g * pstride + j]);
#pragma GCC unroll 8
        for (int u = 0; u < kDV; ++u) a[g][u] = vfma(pv, r[u], a[g][u]);
      }
    }
#pragma GCC unroll 8
    for (int g = 0; g < GB; ++g) {
#pragma GCC unroll 8
      for (int u = 0; u < kDV; ++u) vst(acc + g * D + (dc + u) * W, a[g][u]);
    }
  }
}
#endif

template <int NV, typename T>
inline void group_values(const T* const* rows, int64_t nrows, const float* p, int64_t pstride,
                         float* acc, int64_t G, int64_t D) {
#if AVL_SIMD
  if constexpr (NV > 0 && NV % kDV == 0) {
    const int64_t nch = (G + kMaxGBV - 1) / kMaxGBV;  // balanced chunks: G = 7 -> 4 + 3
    for (int64_t c = 0, g0 = 0; c < nch; ++c) {
      const int64_t gb = G / nch + (c < G % nch ? 1 : 0);
      const float* pg = p + g0 * pstride;
      float* ag = acc + g0 * D;
      switch (gb) {
        case 1: vblock<NV, 1>(rows, nrows, pg, pstride, ag, D); break;
        case 2: vblock<NV, 2>(rows, nrows, pg, pstride, ag, D); break;
        case 3: vblock<NV, 3>(rows, nrows, pg, pstride, ag, D); break;
        case 4: vblock<NV, 4>(rows, nrows, pg, pstride, ag, D); break;
        case 5: vblock<NV, 5>(rows, nrows, pg, pstride, ag, D); break;
        case 6: vblock<NV, 6>(rows, nrows, pg, pstride, ag, D); break;
        case 7: vblock<NV, 7>(rows, nrows, pg, pstride, ag, D); break;
        default: vblock<NV, 8>(rows, nrows, pg, pstride, ag, D); break;
      }
      g0 += gb;
    }
    return;
  }
#endif
  for (int64_t j = 0; j < nrows; ++j)
    for (int64_t g = 0; g < G; ++g) axpy<NV>(p[g * pstride + j], rows[j], acc + g * D, D);
}

struct Shape {
  int64_t B, Hq, Hkv, G, D, n, nsplit, chunk;
  int64_t hper, nchunks;  // kv heads per unit, head ranges per batch row
  int64_t k_sb, k_sh, k_sn, v_sb, v_sh, v_sn;  // strides in elements
  int64_t a_sb, a_sh;  // index strides: per batch row, per kv head (0 = shared by all heads)
  int64_t P;           // probs rows per batch row: 1 (all heads averaged) or Hkv
  bool token_outer;  // a token-major cache: a unit takes a range of heads
  float scale;
};

// Where units leave their results. Without row splits: out, and probs (P = Hkv) or one
// partial sum per unit in `psum` (P = 1, reduced over units after the region). With splits:
// per split the max, sum of exponentials and V accumulator, and the exponentials in E[b, hq, j].
template <typename T>
struct Sink {
  T* out;
  float* probs;
  float* psum;
  float* E;
  float *part_m, *part_l, *part_acc;
};

// Per-thread scratch, reused across calls (fresh allocations would page-fault).
struct Scratch {
  std::vector<float> q, s, acc, m, l, t;
  std::vector<int32_t> pos;  // valid positions (index entries >= 0), one list per kv head
  std::vector<int64_t> cnt;
  std::vector<uint8_t> any, every;  // positions some / every head of a wide index holds
  std::vector<int32_t> mixed;  // union positions (list order) some head lacks
};
Scratch& scratch() {
  static thread_local Scratch w;
  return w;
}
template <typename V>
inline void grow(V& vec, int64_t size) {
  if (vec.size() < static_cast<size_t>(size)) vec.resize(size);
}

// 0, 1, ..., n - 1 (the calling thread's, grown as needed).
const int64_t* identity(int64_t n) {
  static thread_local std::vector<int64_t> ids;
  for (int64_t j = static_cast<int64_t>(ids.size()); j < n; ++j) ids.push_back(j);
  return ids.data();
}

template <typename T>
inline const T* row_ptr(const T* base, const int64_t* idx, int32_t j, int64_t sn) {
  return base + idx[j] * sn;
}

// Index entries: int64 (a row number, or -1 for none) or, for a mask, uint8 (row j when set).
inline bool on(int64_t x) { return x >= 0; }
inline bool on(uint8_t x) { return x != 0; }
inline bool own_slot(int64_t x, int64_t j) { return x < 0 || x == j; }
inline bool own_slot(uint8_t, int64_t) { return true; }

// One unit: kv heads [h0, h0 + hper) of batch row b, index entries [j0, j1) of split `split`.
template <typename T, int NV, typename E>
void attend_unit(const Shape& sh, const T* q, const T* k, const T* v, const E* act,
                 int64_t b, int64_t h0, int64_t split, const Sink<T>& o) {
  const int64_t G = sh.G, D = sh.D, n = sh.n, ns = sh.nsplit;
  const int64_t h1 = std::min(sh.Hkv, h0 + sh.hper), hc = h1 - h0;
  const int64_t j0 = split * sh.chunk, j1 = std::min(n, j0 + sh.chunk), cap = j1 - j0;
  const int64_t nq = hc * G, hq0 = h0 * G;
  const bool shared = sh.a_sh == 0;
  const int64_t rb = D * static_cast<int64_t>(sizeof(T));
  Scratch& w = scratch();
  grow(w.q, nq * D), grow(w.acc, nq * D), grow(w.s, nq * cap), grow(w.t, cap);
  grow(w.m, nq), grow(w.l, nq), grow(w.pos, hc * cap), grow(w.cnt, hc), grow(w.any, cap), grow(w.every, cap), grow(w.mixed, cap);
  float* qf = w.q.data();
  float* S = w.s.data();  // S[i * cap + c]: query head i, c-th valid position of its kv head
  float* acc = w.acc.data();
  constexpr bool kMask = std::is_same_v<E, uint8_t>;  // entry j names row j when set
  const E* ab = act + b * sh.a_sb;
  auto index_of = [&](int64_t hl) { return ab + (h0 + hl) * sh.a_sh; };

  // Valid positions: the -1 entries (padding, or rows a wide index leaves out) are skipped
  // once here, so neither pass touches them. Rows per kv head of a wide index on a token-major
  // cache (sh.token_outer, position j = slot j for every head) whose heads hold nearly the same
  // positions (the union within aligned(): TextH2O's per-head text windows beside shared image
  // rows) are read as shared rows over the union, each head's other positions masked out of its
  // softmax (`masked`); otherwise every head gets its own list, read head by head.
  bool masked = false;
  int64_t n_mixed = 0;  // masked: union positions some head lacks, listed in w.mixed
  if (sh.token_outer && !shared) {
    uint8_t* any = w.any.data();
    uint8_t* every = w.every.data();
    std::fill(any, any + cap, 0);
    std::fill(every, every + cap, 1);
    int64_t most = 0;
    bool slots = true;  // every entry j0 + j is slot j0 + j or -1
    for (int64_t hl = 0; hl < hc; ++hl) {
      const E* idx = index_of(hl) + j0;
      int64_t c = 0;
      for (int64_t j = 0; j < cap; ++j) {
        const uint8_t x = on(idx[j]);
        any[j] |= x;
        every[j] &= x;
        c += x;
        slots &= own_slot(idx[j], j0 + j);
      }
      most = std::max(most, c);
    }
    int32_t* p = w.pos.data();
    int32_t* mixed = w.mixed.data();
    int64_t c = 0;
    for (int64_t j = 0; j < cap; ++j) {
      p[c] = static_cast<int32_t>(j0 + j);
      mixed[n_mixed] = static_cast<int32_t>(c);
      n_mixed += any[j] & !every[j];
      c += any[j];
    }
    masked = slots && c <= most + std::max<int64_t>(kAlignSlack, most / kAlignShare);
    w.cnt[0] = c;
  }
  const bool one_list = shared || masked;  // every head reads list 0
  for (int64_t hl = 0; hl < (masked ? 0 : shared ? 1 : hc); ++hl) {
    const E* idx = index_of(hl);
    int32_t* p = w.pos.data() + hl * cap;
    int64_t c = 0;
    for (int64_t j = j0; j < j1; ++j) {
      p[c] = static_cast<int32_t>(j);
      c += on(idx[j]);
    }
    w.cnt[hl] = c;
  }
  auto list = [&](int64_t hl) { return w.pos.data() + (one_list ? 0 : hl) * cap; };
  auto count = [&](int64_t hl) { return w.cnt[one_list ? 0 : hl]; };
  // Row numbers: the index's entries, or the positions themselves for a mask and a masked
  // union (some heads' entries there are -1), read through the identity.
  const int64_t* ident = masked || kMask ? identity(n) : nullptr;
  auto idx_of = [&](int64_t hl) -> const int64_t* {
    if constexpr (kMask) return ident;
    else return masked ? ident : index_of(hl);
  };
  const bool token_order = sh.token_outer && one_list;
  // rows[r] = head hl's rows of `base` (stride sn) at its valid entries t0 .. t0 + nr - 1,
  // prefetching `ahead` entries ahead.
  auto head_rows = [&](const T* base, int64_t sn, int64_t hl, int64_t t0, int64_t nr, int64_t ahead,
                       const T** rows) {
    const int32_t* p = list(hl);
    const int64_t c = count(hl), *idx = idx_of(hl);
    for (int64_t r = 0; r < nr; ++r) {
      if (t0 + r + ahead < c) prefetch_row(row_ptr(base, idx, p[t0 + r + ahead], sn), rb);
      rows[r] = row_ptr(base, idx, p[t0 + r], sn);
    }
  };

  const T* qb = q + (b * sh.Hq + hq0) * D;
  for (int64_t i = 0; i < nq * D; ++i) qf[i] = static_cast<float>(qb[i]) * sh.scale;
  const T* kb = k + b * sh.k_sb + h0 * sh.k_sh;  // kv head h0 + hl at + hl * k_sh
  const T* vb = v + b * sh.v_sb + h0 * sh.v_sh;
  const int64_t pf_tok = std::max<int64_t>(1, kPrefetchBytes / (hc * rb));  // GQA, tokens
  const int64_t pf_row = kPrefetchRows;

  // Pass 1: scores. Token order (one list, token-major): blocks of tokens, head by head inside
  // a block; head order: each head's rows in index order.
  if (G == 1) {  // memory-bound: one dot per row as it arrives
    auto head_scores = [&](int64_t hl, int64_t t0, int64_t t1, int64_t ahead) {
      const int32_t* p = list(hl);
      const int64_t c = count(hl), *idx = idx_of(hl);
      const T* kh = kb + hl * sh.k_sh;
      for (int64_t t = t0; t < t1; ++t) {
        if (t + ahead < c) prefetch_row(row_ptr(kh, idx, p[t + ahead], sh.k_sn), rb);
        S[hl * cap + t] = dot<NV>(qf + hl * D, row_ptr(kh, idx, p[t], sh.k_sn), D);
      }
    };
    if (token_order) {
      const int64_t c = count(0);
      for (int64_t t0 = 0; t0 < c; t0 += kTokenBlock)
        for (int64_t hl = 0; hl < hc; ++hl)
          head_scores(hl, t0, std::min(c, t0 + kTokenBlock), kTokenBlock);
    } else {
      for (int64_t hl = 0; hl < hc; ++hl) head_scores(hl, 0, count(hl), pf_row);
    }
  } else {
    const T* rows[kBatch];
    auto head_scores = [&](int64_t hl, int64_t tb, int64_t te, int64_t ahead) {
      for (int64_t t0 = tb; t0 < te; t0 += kBatch) {
        const int64_t nr = std::min<int64_t>(kBatch, te - t0);
        head_rows(kb + hl * sh.k_sh, sh.k_sn, hl, t0, nr, ahead, rows);
        group_scores<NV>(qf + hl * G * D, rows, nr, G, D, S + hl * G * cap + t0, cap);
      }
    };
    if (token_order) {
      const int64_t c = count(0);
      for (int64_t t0 = 0; t0 < c; t0 += kBatch)
        for (int64_t hl = 0; hl < hc; ++hl)
          head_scores(hl, t0, std::min<int64_t>(c, t0 + kBatch), pf_tok);
    } else {
      for (int64_t hl = 0; hl < hc; ++hl) head_scores(hl, 0, count(hl), pf_row);
    }
  }
  if (masked) {  // a head's positions outside its own rows take no part in its softmax
    const int32_t* p = list(0);
    const int32_t* mixed = w.mixed.data();
    for (int64_t hl = 0; hl < hc; ++hl) {
      const E* idx = index_of(hl);
      for (int64_t i = 0; i < n_mixed; ++i)
        if (!on(idx[p[mixed[i]]]))
          for (int64_t g = 0; g < G; ++g) S[(hl * G + g) * cap + mixed[i]] = kNegInf;
    }
  }

  // Start the first V rows of the first head while the exponentials are computed (in head
  // order the V pass would otherwise begin with pf_row demand misses per unit).
  if (!token_order) {
    const int32_t* p = list(0);
    const int64_t* idx = idx_of(0);
    for (int64_t t = 0; t < std::min(count(0), pf_row); ++t)
      prefetch_row(row_ptr(vb, idx, p[t], sh.v_sn), rb);
  }

  // Scores -> exponentials, per query head: m = max, l = sum of exp(s - m) (0 and all
  // exponentials 0 for a head whose positions are all masked).
  float* m = w.m.data();
  float* l = w.l.data();
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t c = count(i / G);
    m[i] = max_of(S + i * cap, c);
    if (m[i] == kNegInf) std::fill(S + i * cap, S + i * cap + c, 0.f);
    l[i] = m[i] > kNegInf ? exp_shift_sum(S + i * cap, c, m[i]) : 0.f;
  }

  // Pass 2: weighted sum of the V rows into acc [nq, D].
  std::fill(acc, acc + nq * D, 0.f);
  const T* rows[kVBlock];
  auto head_values = [&](int64_t hl, int64_t tb, int64_t te, int64_t ahead) {  // blocks of rows
    for (int64_t t0 = tb; t0 < te; t0 += kVBlock) {
      const int64_t nr = std::min<int64_t>(kVBlock, te - t0);
      head_rows(vb + hl * sh.v_sh, sh.v_sn, hl, t0, nr, ahead, rows);
      group_values<NV>(rows, nr, S + hl * G * cap + t0, cap, acc + hl * G * D, G, D);
    }
  };
  // MHA: the head's accumulator in registers over its entries [t0, t1).
  auto head_values_mha = [&](int64_t hl, int64_t t0, int64_t t1, int64_t ahead) {
    const int32_t* p = list(hl);
    const int64_t c = count(hl), *idx = idx_of(hl);
    const T* vh = vb + hl * sh.v_sh;
    const float* ph = S + hl * cap;
    float* o = acc + hl * D;
#if AVL_SIMD
    if constexpr (NV > 0 && NV <= 8) {
      vf a[NV];
      for (int i = 0; i < NV; ++i) a[i] = vld(o + i * W);
      for (int64_t t = t0; t < t1; ++t) {
        if (t + ahead < c) prefetch_row(row_ptr(vh, idx, p[t + ahead], sh.v_sn), rb);
        const vf pj = vset(ph[t]);
        const T* row = row_ptr(vh, idx, p[t], sh.v_sn);
#pragma GCC unroll 8
        for (int i = 0; i < NV; ++i) a[i] = vfma(pj, vld(row + i * W), a[i]);
      }
      for (int i = 0; i < NV; ++i) vst(o + i * W, a[i]);
      return;
    }
#endif
    for (int64_t t = t0; t < t1; ++t) {
      if (t + ahead < c) prefetch_row(row_ptr(vh, idx, p[t + ahead], sh.v_sn), rb);
      axpy<NV>(ph[t], row_ptr(vh, idx, p[t], sh.v_sn), o, D);
    }
  };
  if (token_order) {  // blocks of tokens (MHA) or of kVBlock rows (GQA), head by head inside
    const int64_t c = count(0), blk = G == 1 ? kTokenBlock : kVBlock;
    for (int64_t t0 = 0; t0 < c; t0 += blk) {
      const int64_t t1 = std::min(c, t0 + blk);
      for (int64_t hl = 0; hl < hc; ++hl) {
        if (G == 1) head_values_mha(hl, t0, t1, kTokenBlock);
        else head_values(hl, t0, t1, pf_tok);
      }
    }
  } else {
    for (int64_t hl = 0; hl < hc; ++hl) {
      if (G == 1) head_values_mha(hl, 0, count(hl), pf_row);
      else head_values(hl, 0, count(hl), pf_row);
    }
  }

  if (ns > 1) {  // partial results of this split; merged after the parallel region
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t bh = b * sh.Hq + hq0 + i;
      o.part_m[bh * ns + split] = m[i];
      o.part_l[bh * ns + split] = l[i];
      std::copy(acc + i * D, acc + (i + 1) * D, o.part_acc + (bh * ns + split) * D);
      float* e = o.E + bh * n;
      std::fill(e + j0, e + j1, 0.f);
      const int32_t* p = list(i / G);
      for (int64_t t = 0; t < count(i / G); ++t) e[p[t]] = S[i * cap + t];
    }
    return;
  }
  // Complete softmaxes: normalise, write out and this unit's probabilities.
  for (int64_t i = 0; i < nq; ++i) {
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
    l[i] = inv;
    T* dst = o.out + (b * sh.Hq + hq0 + i) * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(acc[i * D + d] * inv);
  }
  // Probabilities: sums over query heads in compact order (vectorised over positions), then
  // scattered to their positions in the index.
  float* x = w.t.data();
  auto head_sum = [&](int64_t i0, int64_t i1, int64_t c, float f) {
    std::fill(x, x + c, 0.f);
    for (int64_t i = i0; i < i1; ++i) {
      const float* s = S + i * cap;
      const float li = l[i] * f;
      for (int64_t t = 0; t < c; ++t) x[t] += s[t] * li;
    }
  };
  if (sh.P == 1) {  // sum over the unit's query heads (shared rows), reduced over units later
    float* ps = o.psum + (b * sh.nchunks + h0 / sh.hper) * n;
    std::fill(ps, ps + n, 0.f);
    const int32_t* p = list(0);
    head_sum(0, nq, count(0), 1.f);
    for (int64_t t = 0; t < count(0); ++t) ps[p[t]] = x[t];
    return;
  }
  const float inv_g = 1.f / static_cast<float>(G);
  for (int64_t hl = 0; hl < hc; ++hl) {  // probs [B, Hkv, n]: mean over the group
    float* pr = o.probs + (b * sh.Hkv + h0 + hl) * n;
    std::fill(pr, pr + n, 0.f);
    const int32_t* p = list(hl);
    head_sum(hl * G, (hl + 1) * G, count(hl), inv_g);
    for (int64_t t = 0; t < count(hl); ++t) pr[p[t]] = x[t];
  }
}

template <typename T, typename E>
void run(const Shape& sh, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
         const at::Tensor& active, at::Tensor& out, at::Tensor& probs, bool serial) {
  const int64_t B = sh.B, Hq = sh.Hq, D = sh.D, n = sh.n, ns = sh.nsplit;
  // Scratch of the calling thread, reused across calls: unit partial sums of probs (shared
  // rows), or the split partials and exponentials.
  static thread_local std::vector<float> ws;
  const size_t need = ns > 1 ? static_cast<size_t>(B * Hq * (n + ns * (2 + D)))
                             : static_cast<size_t>(sh.P == 1 ? B * sh.nchunks * n : 0);
  if (ws.size() < need) ws.resize(need);
  Sink<T> o{out.data_ptr<T>(), probs.data_ptr<float>(), ws.data(), ws.data(), nullptr,
            nullptr, nullptr};
  if (ns > 1) {
    o.part_m = o.E + B * Hq * n;
    o.part_l = o.part_m + B * Hq * ns;
    o.part_acc = o.part_l + B * Hq * ns;
  }
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const E* ap = static_cast<const E*>(active.data_ptr());

  // Row kernels: D fixed at compile time for the common head dims, else generic.
  auto unit = &attend_unit<T, -1, E>;
  if (AVL_SIMD && D == 128) unit = &attend_unit<T, 128 / W, E>;
  else if (AVL_SIMD && D == 64) unit = &attend_unit<T, 64 / W, E>;
  else if (AVL_SIMD && D % W == 0) unit = &attend_unit<T, 0, E>;
  const int64_t units = B * sh.nchunks * ns;
  // One parallel region for the whole call (each region wakes the workers again).
  at::parallel_for(0, units, serial ? units : 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t split = u % ns, bc = u / ns;
      unit(sh, qp, kp, vp, ap, bc / sh.nchunks, (bc % sh.nchunks) * sh.hper, split, o);
    }
  });

  float* pp = probs.data_ptr<float>();
  if (ns == 1) {
    if (sh.P == 1) {  // probs[b] = sum over units / Hq
      const float inv = 1.f / static_cast<float>(Hq);
      for (int64_t b = 0; b < B; ++b) {
        float* pb = pp + b * n;
        const float* ps = o.psum + b * sh.nchunks * n;
        std::copy(ps, ps + n, pb);
        for (int64_t c = 1; c < sh.nchunks; ++c)
          for (int64_t j = 0; j < n; ++j) pb[j] += ps[c * n + j];
        for (int64_t j = 0; j < n; ++j) pb[j] *= inv;
      }
    }
    return;
  }

  // Merge the splits of each (batch, query head); part_m becomes the per-split weight
  // exp(m_s - M) / L that turns stored exponentials into probabilities.
  T* op = out.data_ptr<T>();
  std::vector<float> ov(D);
  for (int64_t bh = 0; bh < B * Hq; ++bh) {
    float* m = o.part_m + bh * ns;
    const float* l = o.part_l + bh * ns;
    const float* acc = o.part_acc + bh * ns * D;
    float M = kNegInf;
    for (int64_t s = 0; s < ns; ++s) M = std::max(M, m[s]);
    float L = 0.f;
    for (int64_t s = 0; s < ns; ++s) {
      m[s] = (m[s] == kNegInf) ? 0.f : std::exp(m[s] - M);
      L += m[s] * l[s];
    }
    std::fill(ov.begin(), ov.end(), 0.f);
    if (L > 0.f) {
      for (int64_t s = 0; s < ns; ++s) {
        m[s] /= L;
        for (int64_t d = 0; d < D; ++d) ov[d] += m[s] * acc[s * D + d];
      }
    } else {
      for (int64_t s = 0; s < ns; ++s) m[s] = 0.f;
    }
    for (int64_t d = 0; d < D; ++d) op[bh * D + d] = static_cast<T>(ov[d]);
  }
  // probs[b, r, j] = mean over the query heads of row r (all Hq heads when P = 1, the G heads
  // of kv head r when P = Hkv) of the normalised probabilities.
  const int64_t hpr = Hq / sh.P;  // query heads per probs row
  const float inv_h = 1.f / static_cast<float>(hpr);
  for (int64_t br = 0; br < B * sh.P; ++br) {
    float* pb = pp + br * n;
    std::fill(pb, pb + n, 0.f);
    for (int64_t hq = br * hpr; hq < (br + 1) * hpr; ++hq) {  // br * hpr = b * Hq + r * hpr
      const float* e = o.E + hq * n;
      const float* wt = o.part_m + hq * ns;
      for (int64_t sp = 0; sp < ns; ++sp) {
        const int64_t j0 = sp * sh.chunk, j1 = std::min(n, j0 + sh.chunk);
        for (int64_t j = j0; j < j1; ++j) pb[j] += wt[sp] * e[j];
      }
    }
    for (int64_t j = 0; j < n; ++j) pb[j] *= inv_h;
  }
}

template <typename T>
void dispatch_index(const Shape& sh, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& active, at::Tensor& out, at::Tensor& probs, bool serial,
                    bool mask) {
  if (mask) run<T, uint8_t>(sh, q, k, v, active, out, probs, serial);
  else run<T, int64_t>(sh, q, k, v, active, out, probs, serial);
}

// True when every kv head of every batch row reads the same rows (per-head indices that are a
// broadcast of shared ones): the shared path then reads each selected token once for all heads.
template <typename E>
bool heads_coincide(const E* ap, int64_t B, int64_t Hkv, int64_t n) {
  for (int64_t b = 0; b < B; ++b) {
    const E* a0 = ap + b * Hkv * n;
    for (int64_t h = 1; h < Hkv; ++h)
      if (!std::equal(a0, a0 + n, a0 + h * n)) return false;
  }
  return true;
}

}  // namespace

std::vector<at::Tensor> core_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& active,
                                           double scale, bool per_head_probs) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() &&
                  active.device().is_cpu(),
              "core_attention_cpu: all tensors must be on the CPU");
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1, "core_attention_cpu: q must be [B, Hq, 1, D]");
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes(),
              "core_attention_cpu: k and v must be [B, Hkv, N, D] of the same shape");
  TORCH_CHECK(q.is_contiguous(), "core_attention_cpu: q must be contiguous");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1,
              "core_attention_cpu: k and v need a unit stride on the last dim");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "core_attention_cpu: q, k and v must share a dtype");
  const bool mask = active.scalar_type() == at::kBool;
  TORCH_CHECK((mask || active.scalar_type() == at::kLong) &&
                  (active.dim() == 2 || active.dim() == 3) && active.is_contiguous(),
              "core_attention_cpu: active must be a contiguous int64 index or bool mask, [B, n] "
              "or [B, Hkv, n]");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3);
  const int64_t Hkv = k.size(1), N = k.size(2), n = active.size(-1);
  const bool per_head = active.dim() == 3;
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && active.size(0) == B,
              "core_attention_cpu: batch or head_dim mismatch between q, k/v and active");
  TORCH_CHECK(!per_head || active.size(1) == Hkv,
              "core_attention_cpu: per-head active must be [B, Hkv, n] with Hkv = k.size(1)");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "core_attention_cpu: Hq must be a multiple of Hkv");
  if (mask) {  // row j where set: no wider than the cache
    TORCH_CHECK(n <= N, "core_attention_cpu: active mask of ", n, " rows for ", N, " rows");
  } else {
    const int64_t* ap = active.data_ptr<int64_t>();
    int64_t lo = 0, hi = -1;  // one vectorisable min/max pass, then a single check
    for (int64_t i = 0; i < active.numel(); ++i) lo = std::min(lo, ap[i]), hi = std::max(hi, ap[i]);
    TORCH_CHECK(lo >= -1 && hi < N, "core_attention_cpu: active index ", lo < -1 ? lo : hi,
                " outside [-1, ", N, ")");
  }

  const int64_t P = (per_head || per_head_probs) ? Hkv : 1;  // probs rows per batch row
  auto out = at::empty({B, Hq, 1, D}, q.options());
  auto probs = per_head || per_head_probs ? at::empty({B, Hkv, n}, q.options().dtype(at::kFloat))
                                          : at::empty({B, n}, q.options().dtype(at::kFloat));
  if (B == 0 || Hq == 0 || D == 0) return {out, probs.zero_()};
  if (n == 0) return {out.zero_(), probs};

  Shape sh{};
  sh.B = B, sh.Hq = Hq, sh.Hkv = Hkv, sh.G = Hq / Hkv, sh.D = D, sh.n = n;
  sh.k_sb = k.stride(0), sh.k_sh = k.stride(1), sh.k_sn = k.stride(2);
  sh.v_sb = v.stride(0), sh.v_sh = v.stride(1), sh.v_sn = v.stride(2);
  sh.P = P;
  // Per-head indices that coincide across heads run exactly as shared ones.
  const bool distinct =
      per_head && !(mask ? heads_coincide(static_cast<const uint8_t*>(active.data_ptr()), B, Hkv, n)
                         : heads_coincide(active.data_ptr<int64_t>(), B, Hkv, n));
  sh.a_sb = per_head ? Hkv * n : n;
  sh.a_sh = distinct ? n : 0;
  sh.scale = static_cast<float>(scale);
  // A token-major cache (heads inside tokens) gives a unit a range of heads (as many ranges as
  // threads need; its rows are read token by token where attend_unit can), a head-major one
  // a unit per kv head.
  sh.token_outer = Hkv > 1 && k.stride(1) < k.stride(2) && v.stride(1) < v.stride(2);
  const int64_t threads = at::get_num_threads();
  const int64_t bytes = 2 * B * Hkv * n * D * static_cast<int64_t>(q.element_size());
  const bool serial = threads == 1 || bytes < kSerialBytes;
  const int64_t ranges = sh.token_outer ? std::min(Hkv, serial ? 1 : (threads + B - 1) / B) : Hkv;
  sh.hper = (Hkv + ranges - 1) / ranges;
  sh.nchunks = (Hkv + sh.hper - 1) / sh.hper;
  // Split the rows only when units are too few to keep every thread busy.
  const int64_t units = B * sh.nchunks;
  const int64_t by_threads = serial ? 1 : (threads + units - 1) / units;
  const int64_t by_rows = std::max<int64_t>(1, n / kMinRowsPerSplit);
  sh.nsplit = std::max<int64_t>(1, std::min(by_threads, by_rows));
  sh.chunk = (n + sh.nsplit - 1) / sh.nsplit;
  sh.nsplit = (n + sh.chunk - 1) / sh.chunk;

  switch (q.scalar_type()) {
    case at::kFloat: dispatch_index<float>(sh, q, k, v, active, out, probs, serial, mask); break;
    case at::kBFloat16:
      dispatch_index<c10::BFloat16>(sh, q, k, v, active, out, probs, serial, mask);
      break;
    case at::kHalf: dispatch_index<c10::Half>(sh, q, k, v, active, out, probs, serial, mask); break;
    default: TORCH_CHECK(false, "core_attention_cpu: dtype must be float32, bfloat16 or float16");
  }
  return {out, probs};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("core_attention", &core_attention_cpu,
        "Core-cache decode attention over the active rows (CPU)", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("active"), py::arg("scale"), py::arg("per_head_probs") = false,
        py::call_guard<py::gil_scoped_release>());
}
