// Core-cache decode attention on CUDA: softmax(q K[a]^T * scale) V[a] over the rows `a` of the
// cache named by `active`, reading those rows in place (no K[a]/V[a] copies).
//
// Specification: avl_lab/ext/reference.py::core_attention_ref. Same layout contract as the CPU
// op: q [B, Hq, 1, D] contiguous; k/v [B, Hkv, N, D] with any strides but a unit stride on D
// (a token-major [B, N, Hkv, D] buffer viewed as [B, Hkv, N, D] works); active [B, n] (rows
// shared by all kv heads) or [B, Hkv, n] (rows per kv head) int64, -1 = padding. Indices outside
// [0, N) are treated as padding (validating them on the host would cost a device sync per call).
//
// Design (token-level index decode with split-KV, after flash-decoding and the page-size-1
// decode kernels of SGLang/FlashInfer):
//   stage 1  grid (split, kv head x query-head tile, batch), 4 warps. A block stages a tile of
//            active indices in shared memory; each warp takes R rows of the tile at a time,
//            loads their K and V rows (one lane = D/32 contiguous values, 4-16 B vector loads),
//            reduces q.k across the warp for the GT query heads of the tile (GQA: each K/V row
//            is read once for all of them) and keeps an online softmax (max, sum, float acc).
//            Warps are merged through shared memory; the split's (max, sum, acc) go to a
//            workspace, or straight to the output when there is one split. Raw scores are kept
//            for the probabilities.
//   stage 2  (only with several splits) log-sum-exp merge of the splits per (batch, head).
//   stage 3  probs[b, j] (or probs[b, h, j] per kv head) = mean over the query heads (of kv
//            head h) of exp2(s - M) / L. Skipped, with the raw scores, when the caller does not
//            want the probabilities (want_probs = false).
// Batches beyond the grid's limit (gridDim.z and stage 3's gridDim.y = B * P must be <= 65535)
// run as several launches over batch chunks (pointers offset per chunk), so any B works.
// Per-head rows change only where a block reads its indices (those of its kv head h). A block
// reads D-runs of one kv head with shared rows too, so per-head rows should cost about the same
// on a GPU (not measured yet), unlike on a CPU (see core_attention_cpu.cpp).
// Splits are chosen so that batch 1 still launches ~4 blocks per SM.
#include <torch/extension.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 64;           // active indices staged per step
constexpr int kMinRowsPerSplit = 32;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

template <int BYTES>
struct Chunk;
template <>
struct Chunk<4> { using type = unsigned int; };
template <>
struct Chunk<8> { using type = uint2; };
template <>
struct Chunk<16> { using type = uint4; };

// x = VEC consecutive values at p (aligned to VEC * sizeof(T)), converted to float.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&x)[VEC]) {
  constexpr int kBytes = VEC * static_cast<int>(sizeof(T));
  constexpr int kChunk = kBytes > 16 ? 16 : kBytes;
  constexpr int kPer = kChunk / static_cast<int>(sizeof(T));
  using C = typename Chunk<kChunk>::type;
#pragma unroll
  for (int i = 0; i < kBytes / kChunk; ++i) {
    const C c = __ldg(reinterpret_cast<const C*>(p) + i);
    const T* e = reinterpret_cast<const T*>(&c);
#pragma unroll
    for (int t = 0; t < kPer; ++t) x[i * kPer + t] = to_float(e[t]);
  }
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

struct Params {
  const void* q;
  const void* k;
  const void* v;
  const int64_t* active;
  void* out;
  float* scores;    // [B, Hq, n] raw scores, log2 domain; nullptr: probabilities not wanted
  float* part_m;    // [B, Hq, nsplit]
  float* part_l;    // [B, Hq, nsplit]
  float* part_acc;  // [B, Hq, nsplit, D]
  float* fin_m;     // [B, Hq]
  float* fin_l;     // [B, Hq]
  float* probs;     // [B, P, n]; nullptr when not wanted
  int64_t k_sb, k_sh, k_sn, v_sb, v_sh, v_sn;
  int64_t a_sb, a_sh;  // index strides per batch row and per kv head (0: shared by all heads)
  int P;               // probs rows per batch row: 1 (all query heads) or Hkv (per kv head)
  int B, Hq, Hkv, G, N, n, nsplit, chunk, head_tiles;
  float scale_log2;  // softmax scale * log2(e)
};

// Rows a warp loads before reducing: more rows = more loads in flight, fewer registers left.
template <int D, int GT>
constexpr int rows_per_iter() { return (D / 32) * GT >= 32 ? 2 : 4; }

template <typename T, int D, int GT>
__global__ void __launch_bounds__(kThreads) stage1(const Params p) {
  constexpr int VEC = D / 32;
  constexpr int R = rows_per_iter<D, GT>();
  const int split = blockIdx.x, b = blockIdx.z;
  const int h = blockIdx.y / p.head_tiles;
  const int g0 = (blockIdx.y % p.head_tiles) * GT;
  const int ng = min(GT, p.G - g0);
  const int hq0 = h * p.G + g0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int j0 = split * p.chunk, j1 = min(p.n, j0 + p.chunk);

  __shared__ int64_t s_idx[kTile];
  __shared__ float s_m[kWarps][GT], s_l[kWarps][GT];
  __shared__ float s_acc[kWarps][GT][D];

  const T* Q = static_cast<const T*>(p.q) + (static_cast<int64_t>(b) * p.Hq + hq0) * D;
  float qr[GT][VEC];
#pragma unroll
  for (int g = 0; g < GT; ++g) {
#pragma unroll
    for (int e = 0; e < VEC; ++e)  // scalar loads: q is read once and may be unaligned
      qr[g][e] = g < ng ? to_float(Q[g * D + lane * VEC + e]) * p.scale_log2 : 0.f;
  }
  const T* Kb = static_cast<const T*>(p.k) + b * p.k_sb + h * p.k_sh + lane * VEC;
  const T* Vb = static_cast<const T*>(p.v) + b * p.v_sb + h * p.v_sh + lane * VEC;
  const int64_t* act = p.active + b * p.a_sb + h * p.a_sh;
  float* S = p.scores == nullptr ? nullptr
                                  : p.scores + (static_cast<int64_t>(b) * p.Hq + hq0) * p.n;

  float m[GT], l[GT], acc[GT][VEC];
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    m[g] = neg_inf();
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[g][e] = 0.f;
  }

  for (int t0 = j0; t0 < j1; t0 += kTile) {
    const int tn = min(kTile, j1 - t0);
    __syncthreads();  // the previous tile is consumed
    if (threadIdx.x < tn) {
      const int64_t a = act[t0 + threadIdx.x];
      s_idx[threadIdx.x] = (a >= 0 && a < p.N) ? a : -1;
    }
    __syncthreads();
    for (int base = warp * R; base < tn; base += kWarps * R) {
      int64_t a[R];
      float kx[R][VEC], vx[R][VEC];
#pragma unroll
      for (int r = 0; r < R; ++r) {  // issue every load before any reduction
        a[r] = base + r < tn ? s_idx[base + r] : -1;
        if (a[r] >= 0) {
          load_vec<T, VEC>(Kb + a[r] * p.k_sn, kx[r]);
          load_vec<T, VEC>(Vb + a[r] * p.v_sn, vx[r]);
        } else {
#pragma unroll
          for (int e = 0; e < VEC; ++e) kx[r][e] = vx[r][e] = 0.f;
        }
      }
      float s[R][GT];
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int g = 0; g < GT; ++g) {
          float d = 0.f;
#pragma unroll
          for (int e = 0; e < VEC; ++e) d = fmaf(qr[g][e], kx[r][e], d);
          d = warp_sum(d);
          s[r][g] = (a[r] >= 0 && g < ng) ? d : neg_inf();
        }
      }
      if (S != nullptr && lane < R && base + lane < tn) {  // lane r writes row r's scores
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (r != lane) continue;
#pragma unroll
          for (int g = 0; g < GT; ++g)
            if (g < ng) S[static_cast<int64_t>(g) * p.n + t0 + base + r] = s[r][g];
        }
      }
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        float mx = m[g];
#pragma unroll
        for (int r = 0; r < R; ++r) mx = fmaxf(mx, s[r][g]);
        if (mx == neg_inf()) continue;  // nothing valid yet
        const float sc = exp2f(m[g] - mx);  // 0 when m was -inf
        l[g] *= sc;
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[g][e] *= sc;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float pr = exp2f(s[r][g] - mx);  // 0 for padding
          l[g] += pr;
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[g][e] = fmaf(pr, vx[r][e], acc[g][e]);
        }
        m[g] = mx;
      }
    }
  }

  // Merge the warps of the block.
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    if (lane == 0) {
      s_m[warp][g] = m[g];
      s_l[warp][g] = l[g];
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) s_acc[warp][g][lane * VEC + e] = acc[g][e];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < ng * D; i += kThreads) {
    const int g = i / D, d = i % D;
    float M = neg_inf();
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, s_m[w][g]);
    float L = 0.f, A = 0.f;
    if (M != neg_inf()) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float c = exp2f(s_m[w][g] - M);
        L += c * s_l[w][g];
        A += c * s_acc[w][g][d];
      }
    }
    const int64_t bh = static_cast<int64_t>(b) * p.Hq + hq0 + g;
    if (p.nsplit == 1) {
      static_cast<T*>(p.out)[bh * D + d] = from_float<T>(L > 0.f ? A / L : 0.f);
      if (d == 0) {
        p.fin_m[bh] = M;
        p.fin_l[bh] = L;
      }
    } else {
      const int64_t slot = bh * p.nsplit + split;
      p.part_acc[slot * D + d] = A;
      if (d == 0) {
        p.part_m[slot] = M;
        p.part_l[slot] = L;
      }
    }
  }
}

// Stage 2: log-sum-exp merge of the splits of one (batch, query head); blockDim.x = D.
template <typename T, int D>
__global__ void merge_splits(const Params p) {
  const int64_t bh = blockIdx.x;
  const float* pm = p.part_m + bh * p.nsplit;
  const float* pl = p.part_l + bh * p.nsplit;
  const float* pa = p.part_acc + bh * p.nsplit * D;
  float M = neg_inf();
  for (int s = 0; s < p.nsplit; ++s) M = fmaxf(M, pm[s]);
  const int d = threadIdx.x;
  float L = 0.f, A = 0.f;
  if (M != neg_inf()) {
    for (int s = 0; s < p.nsplit; ++s) {
      const float c = exp2f(pm[s] - M);
      L += c * pl[s];
      A += c * pa[static_cast<int64_t>(s) * D + d];
    }
  }
  static_cast<T*>(p.out)[bh * D + d] = from_float<T>(L > 0.f ? A / L : 0.f);
  if (d == 0) {
    p.fin_m[bh] = M;
    p.fin_l[bh] = L;
  }
}

// Stage 3: probs row r of batch b (blockIdx.y = b * P + r) = mean over its Hq / P query
// heads, b * Hq + r * Hq / P onwards, of the probabilities over the active rows.
__global__ void head_mean_probs(const Params p) {
  const int64_t br = blockIdx.y;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= p.n) return;
  const int hpr = p.Hq / p.P;
  float sum = 0.f;
  for (int i = 0; i < hpr; ++i) {
    const int64_t bh = br * hpr + i;
    const float L = p.fin_l[bh];
    if (L > 0.f) sum += exp2f(p.scores[bh * p.n + j] - p.fin_m[bh]) / L;  // -inf -> 0
  }
  p.probs[br * p.n + j] = sum / static_cast<float>(hpr);
}

template <typename T, int D, int GT>
void launch(const Params& p, cudaStream_t stream) {
  const dim3 grid(p.nsplit, p.Hkv * p.head_tiles, p.B);
  stage1<T, D, GT><<<grid, kThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (p.nsplit > 1) {
    merge_splits<T, D><<<p.B * p.Hq, D, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (p.probs != nullptr) {
    head_mean_probs<<<dim3((p.n + 255) / 256, p.B * p.P), 256, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T, int D>
void dispatch_gt(const Params& p, int GT, cudaStream_t stream) {
  switch (GT) {
    case 1: launch<T, D, 1>(p, stream); break;
    case 2: launch<T, D, 2>(p, stream); break;
    case 4: launch<T, D, 4>(p, stream); break;
    default: launch<T, D, 8>(p, stream); break;
  }
}

template <typename T>
void dispatch_d(const Params& p, int D, int GT, cudaStream_t stream) {
  switch (D) {
    case 64: dispatch_gt<T, 64>(p, GT, stream); break;
    case 128: dispatch_gt<T, 128>(p, GT, stream); break;
    case 256: dispatch_gt<T, 256>(p, GT, stream); break;
    default: TORCH_CHECK(false, "core_attention_cuda: head_dim must be 64, 128 or 256");
  }
}

}  // namespace

std::vector<at::Tensor> core_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, const at::Tensor& active,
                                            double scale, bool per_head_probs, bool want_probs) {
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device() &&
                  active.device() == q.device(),
              "core_attention_cuda: q, k, v and active must be on one CUDA device");
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1 && q.is_contiguous(),
              "core_attention_cuda: q must be a contiguous [B, Hq, 1, D] tensor");
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes(),
              "core_attention_cuda: k and v must be [B, Hkv, N, D] of the same shape");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "core_attention_cuda: q, k and v must share a dtype");
  TORCH_CHECK(active.scalar_type() == at::kLong && (active.dim() == 2 || active.dim() == 3) &&
                  active.is_contiguous(),
              "core_attention_cuda: active must be a contiguous int64 [B, n] or [B, Hkv, n] tensor");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3);
  const int64_t Hkv = k.size(1), N = k.size(2), n = active.size(-1);
  const bool per_head = active.dim() == 3;
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && active.size(0) == B,
              "core_attention_cuda: batch or head_dim mismatch between q, k/v and active");
  TORCH_CHECK(!per_head || active.size(1) == Hkv,
              "core_attention_cuda: per-head active must be [B, Hkv, n] with Hkv = k.size(1)");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "core_attention_cuda: Hq must be a multiple of Hkv");
  TORCH_CHECK(D == 64 || D == 128 || D == 256, "core_attention_cuda: head_dim must be 64, 128 or 256");
  TORCH_CHECK(N < (int64_t{1} << 31) && n < (int64_t{1} << 31),
              "core_attention_cuda: N and n must be < 2^31");
  const int64_t vec = D / 32, esize = q.element_size();
  for (const at::Tensor* t : {&k, &v}) {
    TORCH_CHECK(t->stride(3) == 1, "core_attention_cuda: k and v need a unit stride on D");
    TORCH_CHECK(t->stride(0) % vec == 0 && t->stride(1) % vec == 0 && t->stride(2) % vec == 0 &&
                    reinterpret_cast<uintptr_t>(t->data_ptr()) % (vec * esize) == 0,
                "core_attention_cuda: k and v rows must be aligned to D/32 elements");
  }

  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({B, Hq, 1, D}, q.options());
  const int64_t P = (per_head || per_head_probs) ? Hkv : 1;  // probs rows per batch row
  at::Tensor probs;
  if (want_probs)
    probs = per_head || per_head_probs ? at::empty({B, Hkv, n}, q.options().dtype(at::kFloat))
                                       : at::empty({B, n}, q.options().dtype(at::kFloat));
  // [out, probs], or [out] alone when the probabilities are not wanted.
  const auto result = [&]() -> std::vector<at::Tensor> {
    if (want_probs) return {out, probs};
    return {out};
  };
  if (B == 0 || Hq == 0) {
    if (want_probs) probs.zero_();
    return result();
  }
  if (n == 0) {
    out.zero_();
    return result();
  }

  const int G = static_cast<int>(Hq / Hkv);
  const int GT = G > 4 ? 8 : (G > 2 ? 4 : G);  // query heads per block: next power of 2, <= 8
  const int head_tiles = (G + GT - 1) / GT;
  const int64_t blocks = B * Hkv * head_tiles;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.get_device()));
  const int64_t by_sms = (4 * sms + blocks - 1) / blocks;
  const int64_t by_rows = (n + kMinRowsPerSplit - 1) / kMinRowsPerSplit;
  int64_t nsplit = std::max<int64_t>(1, std::min(by_sms, by_rows));
  const int64_t chunk = (n + nsplit - 1) / nsplit;
  nsplit = (n + chunk - 1) / chunk;
  // The Python wrapper refuses these shapes first (avl_lab.ext.op.cuda_unsupported); nsplit is
  // at most 4 * SMs. The batch has no limit: it is launched in chunks below.
  TORCH_CHECK(nsplit <= 65535 && Hkv * head_tiles <= 65535,
              "core_attention_cuda: grid.y = Hkv x query-head tiles = ", Hkv * head_tiles,
              " exceeds CUDA's limit 65535");
  // Batch rows per launch: stage 1's gridDim.z and stage 3's gridDim.y = rows * P <= 65535.
  const int64_t bchunk = want_probs ? 65535 / P : 65535;

  auto f32 = q.options().dtype(at::kFloat);
  at::Tensor scores;  // raw scores for the probabilities only
  if (want_probs) scores = at::empty({B, Hq, n}, f32);
  auto fin = at::empty({2, B, Hq}, f32);
  at::Tensor part_ml, part_acc;
  if (nsplit > 1) {
    part_ml = at::empty({2, B, Hq, nsplit}, f32);
    part_acc = at::empty({B, Hq, nsplit, D}, f32);
  }

  Params p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.active = active.data_ptr<int64_t>();
  p.out = out.data_ptr();
  p.scores = want_probs ? scores.data_ptr<float>() : nullptr;
  p.fin_m = fin[0].data_ptr<float>();
  p.fin_l = fin[1].data_ptr<float>();
  if (nsplit > 1) {
    p.part_m = part_ml[0].data_ptr<float>();
    p.part_l = part_ml[1].data_ptr<float>();
    p.part_acc = part_acc.data_ptr<float>();
  }
  p.probs = want_probs ? probs.data_ptr<float>() : nullptr;
  p.k_sb = k.stride(0), p.k_sh = k.stride(1), p.k_sn = k.stride(2);
  p.v_sb = v.stride(0), p.v_sh = v.stride(1), p.v_sn = v.stride(2);
  p.a_sb = per_head ? Hkv * n : n;
  p.a_sh = per_head ? n : 0;
  p.P = static_cast<int>(P);
  p.B = static_cast<int>(B), p.Hq = static_cast<int>(Hq), p.Hkv = static_cast<int>(Hkv);
  p.G = G, p.N = static_cast<int>(N), p.n = static_cast<int>(n);
  p.nsplit = static_cast<int>(nsplit), p.chunk = static_cast<int>(chunk);
  p.head_tiles = head_tiles;
  p.scale_log2 = static_cast<float>(scale) * kLog2e;

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(q.get_device()).stream();
  for (int64_t b0 = 0; b0 < B; b0 += bchunk) {  // one chunk unless B is beyond the grid
    const int64_t bc = std::min(bchunk, B - b0);
    Params c = p;  // the same problem for batch rows b0 .. b0 + bc - 1
    c.B = static_cast<int>(bc);
    c.q = static_cast<const char*>(p.q) + b0 * Hq * D * esize;
    c.k = static_cast<const char*>(p.k) + b0 * p.k_sb * esize;
    c.v = static_cast<const char*>(p.v) + b0 * p.v_sb * esize;
    c.active = p.active + b0 * p.a_sb;
    c.out = static_cast<char*>(p.out) + b0 * Hq * D * esize;
    if (p.scores != nullptr) c.scores = p.scores + b0 * Hq * n;
    c.fin_m = p.fin_m + b0 * Hq;
    c.fin_l = p.fin_l + b0 * Hq;
    if (nsplit > 1) {
      c.part_m = p.part_m + b0 * Hq * nsplit;
      c.part_l = p.part_l + b0 * Hq * nsplit;
      c.part_acc = p.part_acc + b0 * Hq * nsplit * D;
    }
    if (p.probs != nullptr) c.probs = p.probs + b0 * P * n;
    switch (q.scalar_type()) {
      case at::kFloat: dispatch_d<float>(c, static_cast<int>(D), GT, stream); break;
      case at::kBFloat16: dispatch_d<__nv_bfloat16>(c, static_cast<int>(D), GT, stream); break;
      case at::kHalf: dispatch_d<__half>(c, static_cast<int>(D), GT, stream); break;
      default:
        TORCH_CHECK(false, "core_attention_cuda: dtype must be float32, bfloat16 or float16");
    }
  }
  return result();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("core_attention", &core_attention_cuda,
        "Core-cache decode attention over the active rows (CUDA)", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("active"), py::arg("scale"), py::arg("per_head_probs") = false,
        py::arg("want_probs") = true, py::call_guard<py::gil_scoped_release>());
}
