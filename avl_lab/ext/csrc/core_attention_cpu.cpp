// Core-cache decode attention on CPU: softmax(q K[a]^T * scale) V[a] over the rows `a` of the
// cache named by `active`, reading those rows in place (no K[a]/V[a] copies).
//
// Specification: avl_lab/ext/reference.py::core_attention_ref. Layout: q [B, Hq, 1, D] (made
// contiguous by the caller), k/v [B, Hkv, N, D] with any strides but a unit stride on D (so a
// slice of a larger buffer or a token-major [B, N, Hkv, D] buffer viewed as [B, Hkv, N, D] is
// read in place), active [B, n] (rows shared by all kv heads) or [B, Hkv, n] (rows per kv head)
// int64 with -1 padding.
//
// Work is split into tasks run by at::parallel_for: (batch, kv head, row split) for head-major
// caches, (batch, row split) with all heads for token-major ones. A task handles all
// G = Hq / Hkv query heads of a kv head together so each K/V row is read once: pass 1 reads the
// K rows (software prefetch ahead) into scores, pass 2 the V rows into a float accumulator
// (fp32 accumulation for every dtype). With GQA (G > 1) a row is also loaded into registers
// (and converted from bf16/fp16) once for its group: kdots keeps one accumulator per query
// head, vblock keeps the group's output accumulators in registers over a block of rows. Row splits are merged by log-sum-exp, then the
// head-averaged probabilities (over all query heads, or per kv head) are formed from the stored
// exponentials.
//
// Per-head rows ([B, Hkv, n]) run through the same loops, kv head h reading its own index row;
// per-head rows that are the same for every head run exactly as shared rows. Per-head rows are
// as fast as shared ones when each head's rows are one run (the engine stores rows per KV
// head head-major, compacted: a per-head budget's rows stream); scattered 512 B rows (a
// per-head subset of the stored rows) read at ~2/3 of the speed of 16 KiB token runs
// (benchmarks/README.md, "Per-head rows"; other visit orders, prefetch distances and hints
// did no better).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
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
constexpr int64_t kPrefetchRows = 16;   // head-major: rows of one head fetched ahead
constexpr int64_t kTokenBlock = 8;      // token-major: tokens per block (see for_pairs)
constexpr int64_t kMinRowsPerSplit = 128;
constexpr int64_t kVBlock = 32;         // GQA V pass: rows per register-accumulator block

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
inline vf vround(vf x) {
  return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline vf vpow2n(vf p, vf n) { return _mm512_scalef_ps(p, n); }  // p * 2^n
inline vf vzero_below(vf y, vf x, float lo) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, vset(lo), _CMP_GE_OQ), y);
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
inline vf vround(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf vpow2n(vf p, vf n) {  // n in [-126, 127]
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
inline vf vzero_below(vf y, vf x, float lo) {
  return _mm256_and_ps(y, _mm256_cmp_ps(x, vset(lo), _CMP_GE_OQ));
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

// s[j] = exp(s[j] - m) for j in [0, n), returning the sum (m finite; -inf scores give 0).
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

// GQA row kernels: one K or V row applied to GB (<= kMaxGB) query heads of its group with the
// row loaded (and, for bf16/fp16, converted) once. kdots: s[g] = q_g . row for the GB query
// vectors at q + g * D (GB accumulators, one per query head). vblock: acc_g += p_g[j] * V[row j]
// for the rows of a block, acc (stride D per query head) kept in registers DV vectors at a time
// while the block's rows stream through.
constexpr int kMaxGB = 8;
#if AVL_SIMD
// V sweeps: kDV vectors of D for up to kMaxGBV query heads at a time, kMaxGBV * kDV
// accumulators + kDV row vectors + a broadcast within the 32 (AVX-512) / 16 (AVX2) registers.
constexpr int kDV = AVL_SIMD == 16 ? 4 : 1;
constexpr int kMaxGBV = AVL_SIMD == 16 ? 6 : 8;

template <int NV, int GB, typename T>
inline void kdots(const float* q, const T* row, int64_t D, float* s) {
  vf acc[GB];
#pragma GCC unroll 8
  for (int g = 0; g < GB; ++g) acc[g] = vzero();
#pragma GCC unroll 16
  for (int i = 0; i < NV; ++i) {
    const vf r = vld(row + i * W);
#pragma GCC unroll 8
    for (int g = 0; g < GB; ++g) acc[g] = vfma(vld(q + g * D + i * W), r, acc[g]);
  }
#pragma GCC unroll 8
  for (int g = 0; g < GB; ++g) s[g] = vsum(acc[g]);
}

// rows: the block's row pointers (nullptr = padding); p: probabilities of query head g at
// p[g * pstride + j] for the block's j-th row.
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
      if (rows[j] == nullptr) continue;
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

// The G query heads of a group in chunks of at most kMaxGB (a runtime count mapped onto the
// compile-time kernels).
template <int NV, typename T>
inline void kdots_chunk(const float* q, const T* row, int64_t gb, int64_t D, float* s) {
  switch (gb) {
    case 1: kdots<NV, 1>(q, row, D, s); break;
    case 2: kdots<NV, 2>(q, row, D, s); break;
    case 3: kdots<NV, 3>(q, row, D, s); break;
    case 4: kdots<NV, 4>(q, row, D, s); break;
    case 5: kdots<NV, 5>(q, row, D, s); break;
    case 6: kdots<NV, 6>(q, row, D, s); break;
    case 7: kdots<NV, 7>(q, row, D, s); break;
    default: kdots<NV, 8>(q, row, D, s); break;
  }
}

template <int NV, typename T>
inline void vblock_group(const T* const* rows, int64_t nrows, const float* p, int64_t pstride,
                         float* acc, int64_t G, int64_t D) {
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
}
#endif

struct Shape {
  int64_t B, Hq, Hkv, G, N, D, n, nsplit, chunk;
  int64_t k_sb, k_sh, k_sn, v_sb, v_sh, v_sn;  // strides in elements
  int64_t a_sb, a_sh;  // index strides: per batch row, per kv head (0 = shared by all heads)
  int64_t P;           // probs rows per batch row: 1 (all heads averaged) or Hkv
  bool token_outer;  // loop rows outside heads (token-major caches)
  float scale;
};

// Visit (head, row) pairs of a task in the order that matches the cache layout. A head-major
// cache [B, Hkv, N, D] is read head by head (each head's rows form one slab). A token-major one
// ([B, N, Hkv, D] viewed as [B, Hkv, N, D]) is read in blocks of kTokenBlock tokens, head by head
// inside a block; while a block is processed, its successor is prefetched chunk by chunk
// (prefetch distance = one block), so the selected tokens stream in as Hkv * D runs.
template <typename F>
inline void for_pairs(bool token_outer, int64_t h0, int64_t h1, int64_t j0, int64_t j1, F&& f) {
  if (token_outer) {
    for (int64_t jb = j0; jb < j1; jb += kTokenBlock)
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t j = jb; j < std::min(j1, jb + kTokenBlock); ++j) f(h, j);
  } else {
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t j = j0; j < j1; ++j) f(h, j);
  }
}

// One task: kv heads [h0, h1) of batch b, rows [j0, j1) of `active` (split `split`). For its
// query heads hq it leaves exp(s - m) in S[b, hq, j], and m, l = sum exp and
// acc = sum exp * V in the split's slots of part_m / part_l / part_acc.
template <typename T, int NV>
void attend_task(const Shape& sh, const T* q, const T* k, const T* v, const int64_t* act,
                 int64_t b, int64_t h0, int64_t h1, int64_t split, float* S, float* part_m,
                 float* part_l, float* part_acc, std::vector<float>& qf,
                 std::vector<float>& accf, std::vector<float>& m) {
  const int64_t G = sh.G, D = sh.D, n = sh.n, ns = sh.nsplit;
  const int64_t j0 = split * sh.chunk, j1 = std::min(n, j0 + sh.chunk);
  const int64_t hq0 = h0 * G, nq = (h1 - h0) * G;  // query heads of the task
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(T));
  const int64_t pf = sh.token_outer ? kTokenBlock : kPrefetchRows;
  const int64_t* ab = act + b * sh.a_sb;  // kv head h reads the rows ab + h * sh.a_sh
  const T* kb = k + b * sh.k_sb;
  const T* vb = v + b * sh.v_sb;
  const T* qb = q + (b * sh.Hq + hq0) * D;
  for (int64_t i = 0; i < nq * D; ++i) qf[i] = static_cast<float>(qb[i]) * sh.scale;
  float* Sb = S + (b * sh.Hq + hq0) * n;  // query head i of the task at Sb + i * n
  std::fill(m.begin(), m.begin() + nq, kNegInf);

  // Pass 1: scores from the K rows, prefetching the row `pf` rows (or tokens) ahead.
  bool grouped = false;
#if AVL_SIMD
  if constexpr (NV > 0) {
    if (G > 1) {  // GQA: each row loaded once for (chunks of kMaxGB of) the group's query heads
      grouped = true;
      for_pairs(sh.token_outer, h0, h1, j0, j1, [&](int64_t h, int64_t j) {
        const int64_t* idx = ab + h * sh.a_sh;
        if (j + pf < j1 && idx[j + pf] >= 0)
          prefetch_row(kb + h * sh.k_sh + idx[j + pf] * sh.k_sn, row_bytes);
        const int64_t a = idx[j], i0 = (h - h0) * G;
        const T* row = kb + h * sh.k_sh + a * sh.k_sn;
        for (int64_t g0 = 0; g0 < G; g0 += kMaxGB) {
          const int64_t gb = std::min<int64_t>(kMaxGB, G - g0);
          float s[kMaxGB];
          if (a < 0) std::fill(s, s + gb, kNegInf);
          else kdots_chunk<NV>(qf.data() + (i0 + g0) * D, row, gb, D, s);
          for (int64_t g = 0; g < gb; ++g) {
            Sb[(i0 + g0 + g) * n + j] = s[g];
            m[i0 + g0 + g] = std::max(m[i0 + g0 + g], s[g]);
          }
        }
      });
    }
  }
#endif
  if (!grouped) {
    for_pairs(sh.token_outer, h0, h1, j0, j1, [&](int64_t h, int64_t j) {
      const int64_t* idx = ab + h * sh.a_sh;
      if (j + pf < j1 && idx[j + pf] >= 0)
        prefetch_row(kb + h * sh.k_sh + idx[j + pf] * sh.k_sn, row_bytes);
      const int64_t a = idx[j], i0 = (h - h0) * G;
      const T* row = kb + h * sh.k_sh + a * sh.k_sn;
      for (int64_t g = 0; g < G; ++g) {
        const float s = a < 0 ? kNegInf : dot<NV>(qf.data() + (i0 + g) * D, row, D);
        Sb[(i0 + g) * n + j] = s;
        m[i0 + g] = std::max(m[i0 + g], s);
      }
    });
  }
  // Start the first V rows while the exponentials are computed.
  for (int64_t h = h0; h < (sh.token_outer ? h1 : h0 + 1); ++h) {
    const int64_t* idx = ab + h * sh.a_sh;
    for (int64_t j = j0; j < std::min(j1, j0 + pf); ++j)
      if (idx[j] >= 0) prefetch_row(vb + h * sh.v_sh + idx[j] * sh.v_sn, row_bytes);
  }

  for (int64_t i = 0; i < nq; ++i) {
    float* s = Sb + i * n + j0;
    if (m[i] == kNegInf) std::fill(s, s + (j1 - j0), 0.f);  // no valid row in this split
    part_l[(b * sh.Hq + hq0 + i) * ns + split] =
        m[i] == kNegInf ? 0.f : exp_shift_sum(s, j1 - j0, m[i]);
    part_m[(b * sh.Hq + hq0 + i) * ns + split] = m[i];
  }

  // Pass 2: weighted sum of the V rows into a float accumulator [nq, D].
  float* out0 = part_acc + ((b * sh.Hq + hq0) * ns + split) * D;  // head i at + i * ns * D
#if AVL_SIMD
  if constexpr (NV > 0 && NV <= 8) {
    if (G == 1) {  // per head, the accumulator lives in registers for a whole block of rows
      const int64_t blk = sh.token_outer ? kTokenBlock : j1 - j0;
      for (int64_t h = h0; h < h1; ++h)
        for (int i = 0; i < NV; ++i) vst(out0 + (h - h0) * ns * D + i * W, vzero());
      for (int64_t jb = j0; jb < j1; jb += blk) {
        for (int64_t h = h0; h < h1; ++h) {
          float* o = out0 + (h - h0) * ns * D;
          const T* vh = vb + h * sh.v_sh;
          const float* p = Sb + (h - h0) * n;
          const int64_t* idx = ab + h * sh.a_sh;
          vf acc[NV];
          for (int i = 0; i < NV; ++i) acc[i] = vld(o + i * W);
          for (int64_t j = jb; j < std::min(j1, jb + blk); ++j) {
            if (j + pf < j1 && idx[j + pf] >= 0) prefetch_row(vh + idx[j + pf] * sh.v_sn, row_bytes);
            if (idx[j] < 0) continue;
            const vf pj = vset(p[j]);
            const T* row = vh + idx[j] * sh.v_sn;
#pragma GCC unroll 8
            for (int i = 0; i < NV; ++i) acc[i] = vfma(pj, vld(row + i * W), acc[i]);
          }
          for (int i = 0; i < NV; ++i) vst(o + i * W, acc[i]);
        }
      }
      return;
    }
  }
#endif
  std::fill(accf.begin(), accf.begin() + nq * D, 0.f);
#if AVL_SIMD
  if constexpr (NV > 0) {
    if (G > 1) {  // blocks of rows, each loaded once for the G query heads
      const int64_t blk = kVBlock;  // register accumulators live over a block of rows
      const T* rows[kVBlock];
      auto block = [&](int64_t h, int64_t jb) {
        const int64_t je = std::min(j1, jb + blk), i0 = (h - h0) * G;
        const T* vh = vb + h * sh.v_sh;
        const int64_t* idx = ab + h * sh.a_sh;
        for (int64_t j = jb; j < je; ++j) {
          if (j + pf < j1 && idx[j + pf] >= 0) prefetch_row(vh + idx[j + pf] * sh.v_sn, row_bytes);
          rows[j - jb] = idx[j] < 0 ? nullptr : vh + idx[j] * sh.v_sn;
        }
        vblock_group<NV>(rows, je - jb, Sb + i0 * n + jb, n, accf.data() + i0 * D, G, D);
      };
      if (sh.token_outer) {
        for (int64_t jb = j0; jb < j1; jb += blk)
          for (int64_t h = h0; h < h1; ++h) block(h, jb);
      } else {
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t jb = j0; jb < j1; jb += blk) block(h, jb);
      }
      for (int64_t i = 0; i < nq; ++i)
        std::copy(accf.begin() + i * D, accf.begin() + (i + 1) * D, out0 + i * ns * D);
      return;
    }
  }
#endif
  for_pairs(sh.token_outer, h0, h1, j0, j1, [&](int64_t h, int64_t j) {
    const int64_t* idx = ab + h * sh.a_sh;
    if (j + pf < j1 && idx[j + pf] >= 0)
      prefetch_row(vb + h * sh.v_sh + idx[j + pf] * sh.v_sn, row_bytes);
    const int64_t a = idx[j], i0 = (h - h0) * G;
    if (a < 0) return;
    const T* row = vb + h * sh.v_sh + a * sh.v_sn;
    for (int64_t g = 0; g < G; ++g)
      axpy<NV>(Sb[(i0 + g) * n + j], row, accf.data() + (i0 + g) * D, D);
  });
  for (int64_t i = 0; i < nq; ++i)
    std::copy(accf.begin() + i * D, accf.begin() + (i + 1) * D, out0 + i * ns * D);
}

template <typename T>
void run(const Shape& sh, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
         const at::Tensor& active, at::Tensor& out, at::Tensor& probs) {
  const int64_t B = sh.B, Hq = sh.Hq, G = sh.G, D = sh.D, n = sh.n, ns = sh.nsplit;
  // Scratch reused across calls by this thread (fresh allocations would page-fault).
  static thread_local std::vector<float> ws;
  const size_t need = static_cast<size_t>(B * Hq * (n + ns * (2 + D)));
  if (ws.size() < need) ws.resize(need);
  float* S = ws.data();
  float* part_m = S + B * Hq * n;
  float* part_l = part_m + B * Hq * ns;
  float* part_acc = part_l + B * Hq * ns;

  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const int64_t* ap = active.data_ptr<int64_t>();

  // Tasks: (batch, split) with all kv heads when token-outer, else (batch, kv head, split).
  const int64_t hper = sh.token_outer ? sh.Hkv : 1;
  const int64_t tasks = B * (sh.Hkv / hper) * ns;
  // Row kernels: D fixed at compile time for the common head dims, else generic.
  auto task = &attend_task<T, -1>;
  if (AVL_SIMD && D == 128) task = &attend_task<T, 128 / W>;
  else if (AVL_SIMD && D == 64) task = &attend_task<T, 64 / W>;
  else if (AVL_SIMD && D % W == 0) task = &attend_task<T, 0>;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const int64_t nq = hper * G;
    std::vector<float> qf(nq * D), accf(nq * D), m(nq);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t split = t % ns, bh = t / ns;
      const int64_t b = bh / (sh.Hkv / hper), h0 = (bh % (sh.Hkv / hper)) * hper;
      task(sh, qp, kp, vp, ap, b, h0, h0 + hper, split, S, part_m, part_l, part_acc, qf, accf, m);
    }
  });

  // Merge the splits of each (batch, query head); part_m becomes the per-split weight
  // exp(m_s - M) / L that turns stored exponentials into probabilities.
  T* op = out.data_ptr<T>();
  at::parallel_for(0, B * Hq, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> o(D);
    for (int64_t bh = begin; bh < end; ++bh) {
      float* m = part_m + bh * ns;
      const float* l = part_l + bh * ns;
      const float* acc = part_acc + bh * ns * D;
      float M = kNegInf;
      for (int64_t s = 0; s < ns; ++s) M = std::max(M, m[s]);
      float L = 0.f;
      for (int64_t s = 0; s < ns; ++s) {
        m[s] = (m[s] == kNegInf) ? 0.f : std::exp(m[s] - M);
        L += m[s] * l[s];
      }
      std::fill(o.begin(), o.end(), 0.f);
      if (L > 0.f) {
        for (int64_t s = 0; s < ns; ++s) {
          m[s] /= L;
          for (int64_t d = 0; d < D; ++d) o[d] += m[s] * acc[s * D + d];
        }
      } else {
        for (int64_t s = 0; s < ns; ++s) m[s] = 0.f;
      }
      for (int64_t d = 0; d < D; ++d) op[bh * D + d] = static_cast<T>(o[d]);
    }
  });

  // probs[b, r, j] = mean over the query heads of row r (all Hq heads when P = 1, the G heads
  // of kv head r when P = Hkv) of the normalised probabilities.
  float* pp = probs.data_ptr<float>();
  const int64_t hpr = Hq / sh.P;  // query heads per probs row
  const float inv_h = 1.f / static_cast<float>(hpr);
  at::parallel_for(0, B * sh.P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t br = begin; br < end; ++br) {
      float* pb = pp + br * n;
      std::fill(pb, pb + n, 0.f);
      for (int64_t hq = br * hpr; hq < (br + 1) * hpr; ++hq) {  // br * hpr = b * Hq + r * hpr
        const float* s = S + hq * n;
        const float* w = part_m + hq * ns;
        for (int64_t sp = 0; sp < ns; ++sp) {
          const int64_t j0 = sp * sh.chunk, j1 = std::min(n, j0 + sh.chunk);
          const float ws_ = w[sp];
          for (int64_t j = j0; j < j1; ++j) pb[j] += ws_ * s[j];
        }
      }
      for (int64_t j = 0; j < n; ++j) pb[j] *= inv_h;
    }
  });
}

// True when every kv head of every batch row reads the same rows (per-head indices that are a
// broadcast of shared ones): the shared path then reads each selected token once for all heads.
bool heads_coincide(const int64_t* ap, int64_t B, int64_t Hkv, int64_t n) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* a0 = ap + b * Hkv * n;
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
  TORCH_CHECK(active.scalar_type() == at::kLong && (active.dim() == 2 || active.dim() == 3) &&
                  active.is_contiguous(),
              "core_attention_cpu: active must be a contiguous int64 [B, n] or [B, Hkv, n] tensor");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3);
  const int64_t Hkv = k.size(1), N = k.size(2), n = active.size(-1);
  const bool per_head = active.dim() == 3;
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && active.size(0) == B,
              "core_attention_cpu: batch or head_dim mismatch between q, k/v and active");
  TORCH_CHECK(!per_head || active.size(1) == Hkv,
              "core_attention_cpu: per-head active must be [B, Hkv, n] with Hkv = k.size(1)");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "core_attention_cpu: Hq must be a multiple of Hkv");
  const int64_t* ap = active.data_ptr<int64_t>();
  for (int64_t i = 0; i < active.numel(); ++i)
    TORCH_CHECK(ap[i] >= -1 && ap[i] < N, "core_attention_cpu: active index ", ap[i],
                " outside [-1, ", N, ")");

  const int64_t P = (per_head || per_head_probs) ? Hkv : 1;  // probs rows per batch row
  auto out = at::empty({B, Hq, 1, D}, q.options());
  auto probs = per_head || per_head_probs ? at::empty({B, Hkv, n}, q.options().dtype(at::kFloat))
                                          : at::empty({B, n}, q.options().dtype(at::kFloat));
  if (B == 0 || Hq == 0 || D == 0) return {out, probs.zero_()};
  if (n == 0) return {out.zero_(), probs};

  Shape sh{};
  sh.B = B, sh.Hq = Hq, sh.Hkv = Hkv, sh.G = Hq / Hkv, sh.N = N, sh.D = D, sh.n = n;
  sh.k_sb = k.stride(0), sh.k_sh = k.stride(1), sh.k_sn = k.stride(2);
  sh.v_sb = v.stride(0), sh.v_sh = v.stride(1), sh.v_sn = v.stride(2);
  sh.P = P;
  // Per-head indices that coincide across heads run exactly as shared ones.
  const bool distinct = per_head && !heads_coincide(ap, B, Hkv, n);
  sh.a_sb = per_head ? Hkv * n : n;
  sh.a_sh = distinct ? n : 0;
  sh.scale = static_cast<float>(scale);
  // Token-major caches (heads inside tokens) are read token by token, all heads per task.
  sh.token_outer = Hkv > 1 && k.stride(1) < k.stride(2) && v.stride(1) < v.stride(2);
  // Split the rows only when tasks are too few to keep every thread busy.
  const int64_t units = sh.token_outer ? B : B * Hkv;
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t by_threads = (want + units - 1) / units;
  const int64_t by_rows = std::max<int64_t>(1, n / (sh.token_outer ? 32 : kMinRowsPerSplit));
  sh.nsplit = std::max<int64_t>(1, std::min(by_threads, by_rows));
  sh.chunk = (n + sh.nsplit - 1) / sh.nsplit;
  sh.nsplit = (n + sh.chunk - 1) / sh.chunk;

  switch (q.scalar_type()) {
    case at::kFloat: run<float>(sh, q, k, v, active, out, probs); break;
    case at::kBFloat16: run<c10::BFloat16>(sh, q, k, v, active, out, probs); break;
    case at::kHalf: run<c10::Half>(sh, q, k, v, active, out, probs); break;
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
