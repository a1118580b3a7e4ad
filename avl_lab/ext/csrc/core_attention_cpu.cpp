// Core-cache decode attention on CPU: softmax(q K[a]^T * scale) V[a] over the rows `a` of the
// cache named by `active`, reading those rows in place (no K[a]/V[a] copies).
//
// Specification: avl_lab/ext/reference.py::core_attention_ref. Layout: q [B, Hq, 1, D] (made
// contiguous by the caller), k/v [B, Hkv, N, D] with any strides but a unit stride on D (so a
// slice of a larger buffer or a token-major [B, N, Hkv, D] buffer viewed as [B, Hkv, N, D] is
// read in place), active [B, n] int64 with -1 padding.
//
// Work is split into tasks run by at::parallel_for: (batch, kv head, row split) for head-major
// caches, (batch, row split) with all heads for token-major ones. A task handles all
// G = Hq / Hkv query heads of a kv head together so each K/V row is read once: pass 1 reads the
// K rows (software prefetch ahead) into scores, pass 2 the V rows into a float accumulator
// (fp32 accumulation for every dtype). Row splits are merged by log-sum-exp, then the
// head-averaged probabilities are formed from the stored exponentials.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define AVL_AVX2 1
#else
#define AVL_AVX2 0
#endif

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kPrefetchRows = 16;   // head-major: rows of one head fetched ahead
constexpr int64_t kPrefetchTokens = 1;  // token-major: tokens (all heads) fetched ahead
constexpr int64_t kMinRowsPerSplit = 128;

inline void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  // Locality 2 (prefetcht1): measured ~30% faster than t0 on these machines for random
  // 256-512 B rows, as the lines wait in L2 instead of competing for L1 fill buffers.
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 2);
}

#if AVL_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// s[g] = q[g] . row for the G query heads (q is float [G, D]).
template <typename T>
inline void dot_heads(const float* q, int64_t G, const T* row, int64_t D, float* s) {
#if AVL_AVX2
  if (D % 8 == 0) {
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
      const int64_t gn = std::min<int64_t>(4, G - g0);
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                       _mm256_setzero_ps()};
      for (int64_t d = 0; d < D; d += 8) {
        const __m256 x = load8(row + d);
        for (int64_t g = 0; g < gn; ++g)
          acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (g0 + g) * D + d), x, acc[g]);
      }
      for (int64_t g = 0; g < gn; ++g) s[g0 + g] = hsum8(acc[g]);
    }
    return;
  }
#endif
  for (int64_t g = 0; g < G; ++g) {
    float a = 0.f;
    for (int64_t d = 0; d < D; ++d) a += q[g * D + d] * static_cast<float>(row[d]);
    s[g] = a;
  }
}

// acc[g] += p[g] * row for the G heads (acc is float [G, D]).
template <typename T>
inline void axpy_heads(const float* p, int64_t G, const T* row, int64_t D, float* acc) {
#if AVL_AVX2
  if (D % 8 == 0) {
    for (int64_t d = 0; d < D; d += 8) {
      const __m256 x = load8(row + d);
      for (int64_t g = 0; g < G; ++g) {
        float* o = acc + g * D + d;
        _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_set1_ps(p[g]), x, _mm256_loadu_ps(o)));
      }
    }
    return;
  }
#endif
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < D; ++d) acc[g * D + d] += p[g] * static_cast<float>(row[d]);
}

struct Shape {
  int64_t B, Hq, Hkv, G, N, D, n, nsplit, chunk;
  int64_t k_sb, k_sh, k_sn, v_sb, v_sh, v_sn;  // strides in elements
  bool token_outer;  // loop rows outside heads (token-major caches)
  float scale;
};

// Visit (head, row) pairs of a task in the order that matches the cache layout: a
// head-major cache [B, Hkv, N, D] is read head by head (each head's rows form one slab); a
// token-major one ([B, N, Hkv, D] viewed as [B, Hkv, N, D]) token by token, so that a
// selected token's K (or V) block for all heads, Hkv * D contiguous values, is one stream.
template <typename F>
inline void for_pairs(bool token_outer, int64_t h0, int64_t h1, int64_t j0, int64_t j1, F&& f) {
  if (token_outer) {
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t h = h0; h < h1; ++h) f(h, j);
  } else {
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t j = j0; j < j1; ++j) f(h, j);
  }
}

// One task: kv heads [h0, h1) of batch b, rows [j0, j1) of `active` (split `split`). For its
// query heads hq it leaves exp(s - m) in S[b, hq, j], and m, l = sum exp and
// acc = sum exp * V in the split's slots of part_m / part_l / part_acc.
template <typename T>
void attend_task(const Shape& sh, const T* q, const T* k, const T* v, const int64_t* act,
                 int64_t b, int64_t h0, int64_t h1, int64_t split, float* S, float* part_m,
                 float* part_l, float* part_acc, std::vector<float>& qf,
                 std::vector<float>& accf, std::vector<float>& m, std::vector<float>& tmp) {
  const int64_t G = sh.G, D = sh.D, n = sh.n, ns = sh.nsplit;
  const int64_t j0 = split * sh.chunk, j1 = std::min(n, j0 + sh.chunk);
  const int64_t hq0 = h0 * G, nq = (h1 - h0) * G;  // query heads of the task
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(T));
  const int64_t pf = sh.token_outer ? kPrefetchTokens : kPrefetchRows;
  const int64_t* idx = act + b * n;
  const T* kb = k + b * sh.k_sb;
  const T* vb = v + b * sh.v_sb;
  const T* qb = q + (b * sh.Hq + hq0) * D;
  for (int64_t i = 0; i < nq * D; ++i) qf[i] = static_cast<float>(qb[i]);
  float* Sb = S + (b * sh.Hq + hq0) * n;  // query head i of the task at Sb + i * n
  std::fill(m.begin(), m.begin() + nq, kNegInf);

  // Pass 1: scores from the K rows, prefetching the row `pf` rows (or tokens) ahead.
  for_pairs(sh.token_outer, h0, h1, j0, j1, [&](int64_t h, int64_t j) {
    if (j + pf < j1 && idx[j + pf] >= 0)
      prefetch_row(kb + h * sh.k_sh + idx[j + pf] * sh.k_sn, row_bytes);
    const int64_t a = idx[j], i0 = (h - h0) * G;
    if (a < 0) {
      for (int64_t g = 0; g < G; ++g) Sb[(i0 + g) * n + j] = kNegInf;
      return;
    }
    dot_heads(qf.data() + i0 * D, G, kb + h * sh.k_sh + a * sh.k_sn, D, tmp.data());
    for (int64_t g = 0; g < G; ++g) {
      const float s = tmp[g] * sh.scale;
      Sb[(i0 + g) * n + j] = s;
      m[i0 + g] = std::max(m[i0 + g], s);
    }
  });
  // Start the first V rows while the exponentials are computed.
  for (int64_t h = h0; h < (sh.token_outer ? h1 : h0 + 1); ++h)
    for (int64_t j = j0; j < std::min(j1, j0 + pf); ++j)
      if (idx[j] >= 0) prefetch_row(vb + h * sh.v_sh + idx[j] * sh.v_sn, row_bytes);

  for (int64_t i = 0; i < nq; ++i) {
    float* s = Sb + i * n;
    const float mi = m[i];
    float l = 0.f;
    for (int64_t j = j0; j < j1; ++j) {
      const float e = (mi == kNegInf) ? 0.f : std::exp(s[j] - mi);  // exp(-inf) = 0: padding
      s[j] = e;
      l += e;
    }
    part_m[(b * sh.Hq + hq0 + i) * ns + split] = mi;
    part_l[(b * sh.Hq + hq0 + i) * ns + split] = l;
  }

  // Pass 2: weighted sum of the V rows into a float accumulator [nq, D].
  std::fill(accf.begin(), accf.begin() + nq * D, 0.f);
  for_pairs(sh.token_outer, h0, h1, j0, j1, [&](int64_t h, int64_t j) {
    if (j + pf < j1 && idx[j + pf] >= 0)
      prefetch_row(vb + h * sh.v_sh + idx[j + pf] * sh.v_sn, row_bytes);
    const int64_t a = idx[j], i0 = (h - h0) * G;
    if (a < 0) return;
    for (int64_t g = 0; g < G; ++g) tmp[g] = Sb[(i0 + g) * n + j];
    axpy_heads(tmp.data(), G, vb + h * sh.v_sh + a * sh.v_sn, D, accf.data() + i0 * D);
  });
  for (int64_t i = 0; i < nq; ++i)
    std::copy(accf.begin() + i * D, accf.begin() + (i + 1) * D,
              part_acc + ((b * sh.Hq + hq0 + i) * ns + split) * D);
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
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const int64_t nq = hper * G;
    std::vector<float> qf(nq * D), accf(nq * D), m(nq), tmp(G);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t split = t % ns, bh = t / ns;
      const int64_t b = bh / (sh.Hkv / hper), h0 = (bh % (sh.Hkv / hper)) * hper;
      attend_task<T>(sh, qp, kp, vp, ap, b, h0, h0 + hper, split, S, part_m, part_l, part_acc,
                     qf, accf, m, tmp);
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

  // probs[b, j] = mean over query heads of the normalised probabilities.
  float* pp = probs.data_ptr<float>();
  const float inv_h = 1.f / static_cast<float>(Hq);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float* pb = pp + b * n;
      std::fill(pb, pb + n, 0.f);
      for (int64_t hq = 0; hq < Hq; ++hq) {
        const float* s = S + (b * Hq + hq) * n;
        const float* w = part_m + (b * Hq + hq) * ns;
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

}  // namespace

std::vector<at::Tensor> core_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& active,
                                           double scale) {
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
  TORCH_CHECK(active.scalar_type() == at::kLong && active.dim() == 2 && active.is_contiguous(),
              "core_attention_cpu: active must be a contiguous int64 [B, n] tensor");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3);
  const int64_t Hkv = k.size(1), N = k.size(2), n = active.size(1);
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && active.size(0) == B,
              "core_attention_cpu: batch or head_dim mismatch between q, k/v and active");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "core_attention_cpu: Hq must be a multiple of Hkv");
  const int64_t* ap = active.data_ptr<int64_t>();
  for (int64_t i = 0; i < B * n; ++i)
    TORCH_CHECK(ap[i] >= -1 && ap[i] < N, "core_attention_cpu: active index ", ap[i],
                " outside [-1, ", N, ")");

  auto out = at::empty({B, Hq, 1, D}, q.options());
  auto probs = at::empty({B, n}, q.options().dtype(at::kFloat));
  if (B == 0 || Hq == 0 || D == 0) return {out, probs.zero_()};
  if (n == 0) return {out.zero_(), probs};

  Shape sh{};
  sh.B = B, sh.Hq = Hq, sh.Hkv = Hkv, sh.G = Hq / Hkv, sh.N = N, sh.D = D, sh.n = n;
  sh.k_sb = k.stride(0), sh.k_sh = k.stride(1), sh.k_sn = k.stride(2);
  sh.v_sb = v.stride(0), sh.v_sh = v.stride(1), sh.v_sn = v.stride(2);
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
        py::arg("v"), py::arg("active"), py::arg("scale"));
}
