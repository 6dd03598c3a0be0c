// BERT's encoder and pooler (bertkit/model.py's BertModel.forward) in C++, for a CPU batch of sentences
// of any lengths, padding skipped. Built on the user's machine by bertkit/cpu/native/encoder.py
// (torch.utils.cpp_extension).
//
// Why: at one sentence of ~25 tokens a PyTorch forward is many small operations, each a dispatch, a
// pass over memory and a thread fork/join, and its GEMMs (MKL's or oneDNN's) are tuned for larger
// inputs. Here every step is one pass with its values in registers:
// - the matrix multiplies: weights packed once into panels of 2 vectors of output columns; a register
//   block of up to 12 input rows x 1 panel keeps 24 accumulators while the panel streams past, so a
//   sentence of 25 tokens keeps the FMA units busy (MiniLM's weights, AMD Zen 4, 2 cores: 166 GFLOP/s
//   at 25 rows against oneDNN's 127, 92% of the FMA peak from 256 rows; benchmarks/native_gemm.py).
//   The bias starts the accumulators and GELU / ReLU are applied as the block is stored; the same in
//   bf16 (AVX512_BF16) and int8 (AVX512_VNNI) further down;
// - attention per (sequence, head) over that sequence's own tokens, the work split between threads by
//   cost: K transposed once (W x W blocks in registers), then per block of up to 12 query rows the
//   scores and P.V as register blocks like the GEMMs', softmax with a polynomial exp (no (T, T) tensor
//   per head in memory, no padding, no mask; 1.7x the previous per-row kernel and 8.9x the layer path's
//   SDPA at batch 32 on Zen 4: benchmarks/native_attention.py);
// - add + LayerNorm in one pass per row; erf-GELU by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7).
// Sentences are packed row after row (MosaicBERT's unpadding): a padded batch costs its real tokens.
// Vectors are GCC/Clang vector extensions as wide as the instruction set the loader compiles for
// (PyTorch's own CPU capability): 16 floats with AVX-512, 8 with AVX2, 4 otherwise. A vector wider
// than the target's registers is not split well by the compiler (AVX2 ran at half speed with 16).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define AVX512_KERNELS 1  // bf16 and int8 kernels: compiled for their ISA extensions, run only where the CPU has them
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#else
#define AVX512_KERNELS 0
#endif

namespace {

using at::Tensor;
#if defined(__AVX512F__)
constexpr int64_t W = 16;  // floats per vector
#elif defined(__AVX__)
constexpr int64_t W = 8;
#else
constexpr int64_t W = 4;
#endif
constexpr int64_t HEAD_STEP = 16;  // head sizes: multiples of 16 up to 128, for every W
typedef float vec __attribute__((vector_size(W * sizeof(float))));
typedef int32_t ivec __attribute__((vector_size(W * sizeof(int32_t))));

inline vec load(const float* p) { vec v; std::memcpy(&v, p, sizeof v); return v; }  // any alignment
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }
inline vec splat(float s) { return vec{} + s; }
inline vec vmax(vec a, vec b) { return a > b ? a : b; }

// horizontal sum / max in halving steps: swap halves, then quarters, ...
inline vec swap_halves(vec v) {
#if defined(__AVX512F__)
  return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
#elif defined(__AVX__)
  return __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
#else
  return __builtin_shufflevector(v, v, 2, 3, 0, 1);
#endif
}
template <typename Op>
inline float reduce(vec v, Op op) {
  v = op(v, swap_halves(v));
#if defined(__AVX512F__)
  v = op(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  v = op(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  v = op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
#elif defined(__AVX__)
  v = op(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5));
  v = op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6));
#else
  v = op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2));
#endif
  return v[0];
}
inline float hsum(vec v) { return reduce(v, [](vec a, vec b) { return a + b; }); }
inline float hmax(vec v) { return reduce(v, vmax); }

// W x W transpose in registers: log2(W) stages, each swapping the off-diagonal b x b blocks of every
// 2b x 2b block (b = W/2, W/4, ..., 1), one two-vector shuffle per row
template <int b, int... E>
inline vec mix_low(vec x, vec y, std::integer_sequence<int, E...>) { return __builtin_shufflevector(x, y, ((E & b) ? W + E - b : E)...); }
template <int b, int... E>
inline vec mix_high(vec x, vec y, std::integer_sequence<int, E...>) { return __builtin_shufflevector(x, y, ((E & b) ? W + E : E + b)...); }
template <int b = W / 2>
inline void transpose(vec* rows) {
  for (int i = 0; i < W; ++i)
    if (!(i & b)) {
      const vec low = mix_low<b>(rows[i], rows[i + b], std::make_integer_sequence<int, W>{});
      rows[i + b] = mix_high<b>(rows[i], rows[i + b], std::make_integer_sequence<int, W>{});
      rows[i] = low;
    }
  if constexpr (b > 1) transpose<b / 2>(rows);
}

// e^x for x <= 0: 2^n p(r) with Cephes' expf polynomial; n rounded by adding and subtracting 1.5 * 2^23
inline vec exp_neg(vec x) {
  x = x < -87.3f ? splat(-87.3f) : x;  // keeps 2^n a normal float
  vec n = x * 1.44269504088896341f + 12582912.f;
  n -= 12582912.f;
  const vec r = x - n * 0.693359375f + n * 2.12194440e-4f;  // x - n ln2, ln2 split in two for precision
  vec p = splat(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
  vec scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// GELU(x) = x/2 (1 + erf(x / sqrt 2))
inline vec gelu_erf(vec x) {
  const vec z = x * 0.70710678118654752f;
  const vec az = z < 0.f ? -z : z;
  const vec t = 1.f / (1.f + 0.3275911f * az);
  vec p = splat(1.061405429f);
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const vec e = 1.f - p * t * exp_neg(-z * z);  // erf(|z|)
  return 0.5f * x * (1.f + (z < 0.f ? -e : e));
}

// rows of y (n, h) <- LayerNorm(y + r) w + b; r may be null; h a multiple of W
void add_layer_norm(float* y, const float* r, const float* w, const float* b, int64_t n, int64_t h, float eps) {
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {  // one sentence's rows: one thread
    for (int64_t i = begin; i < end; ++i) {
      float* row = y + i * h;
      vec acc{};
      for (int64_t j = 0; j < h; j += W) {
        vec v = load(row + j);
        if (r) {
          v += load(r + i * h + j);
          store(row + j, v);
        }
        acc += v;
      }
      const float mean = hsum(acc) / h;
      vec sq{};
      for (int64_t j = 0; j < h; j += W) {
        const vec d = load(row + j) - mean;
        sq += d * d;
      }
      const float inv = 1.f / std::sqrt(hsum(sq) / h + eps);
      for (int64_t j = 0; j < h; j += W) store(row + j, (load(row + j) - mean) * inv * load(w + j) + load(b + j));
    }
  });
}

// block(rows) with rows (1 <= rows <= MR) as a compile-time constant, std::integral_constant<int, rows>:
// a register block's accumulators are an array of that many rows.
template <int MR, typename Block>
inline void with_rows(int rows, const Block& block) {
  if constexpr (MR > 1) {
    if (rows < MR) return with_rows<MR - 1>(rows, block);
  }
  block(std::integral_constant<int, MR>{});
}

// The register blocks of one head's attention (attend_rows): query rows per block and vectors of keys per
// block of scores, as many as the vector registers hold.
template <int64_t hd>
struct HeadShape {
  static constexpr int NV = hd / W;                  // vectors per head row
  static constexpr int REGISTERS = W == 16 ? 32 : 16;
  static constexpr int MAX_ROWS = W == 16 ? 12 : 6;  // as the GEMM's register block
  // P.V keeps ROWS x NV accumulators, NV values of V and a broadcast in registers; the scores ROWS x KV
  static constexpr int ROWS = std::max(1, std::min(MAX_ROWS, (REGISTERS - 1 - NV) / NV));
  static constexpr int KV = std::max(1, std::min(2, (REGISTERS - 1) / (ROWS + 1)));  // vectors of keys per score block
  static constexpr int64_t KEYS = KV * W;
  static int64_t padded(int64_t T) { return (T + KEYS - 1) / KEYS * KEYS; }
};

// Scores are kept in chunks of W keys with the R rows of a chunk side by side (s + chunk * R * W + r * W),
// and the block's query rows are copied together first: every address in the inner loops is then one
// pointer plus a constant (row pointers R apart at a run-time stride left too few registers: spills).
template <int64_t hd, int R>
void attend_rows(const float* tok, int64_t T, int64_t Tp, int64_t stride, int64_t H, int64_t off, int64_t i0,
                 float* out, const float* kt, float* s) {
  using S = HeadShape<hd>;
  constexpr int NV = S::NV, KV = S::KV;
  constexpr int64_t CHUNK = R * W;  // floats per chunk of W keys
  float q[R * hd];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) store(q + r * hd + u * W, load(tok + (i0 + r) * stride + off + u * W));
  for (int64_t c = 0; c < Tp; c += S::KEYS) {  // scores of R query rows against KEYS keys
    vec a[R][KV] = {};
    for (int64_t d = 0; d < hd; ++d) {
      vec k[KV];
      for (int v = 0; v < KV; ++v) k[v] = load(kt + d * Tp + c + v * W);
      for (int r = 0; r < R; ++r) {
        const float x = q[r * hd + d];
        for (int v = 0; v < KV; ++v) a[r][v] += x * k[v];
      }
    }
    if (c + S::KEYS > T) {  // keys past the last one score -inf: their e^x is 0
      vec key{};
      for (int i = 0; i < W; ++i) key[i] = static_cast<float>(c + i);
      for (int v = 0; v < KV; ++v, key += static_cast<float>(W))
        for (int r = 0; r < R; ++r) a[r][v] = key < static_cast<float>(T) ? a[r][v] : splat(-std::numeric_limits<float>::infinity());
    }
    for (int v = 0; v < KV; ++v)
      for (int r = 0; r < R; ++r) store(s + (c / W + v) * CHUNK + r * W, a[r][v]);
  }
  const int64_t chunks = Tp / W;
  float inv[R];
  for (int r = 0; r < R; ++r) {  // softmax numerators in place, and 1 / their sum
    float* sr = s + r * W;
    vec m = load(sr);
    for (int64_t c = 1; c < chunks; ++c) m = vmax(m, load(sr + c * CHUNK));
    const float mx = hmax(m);
    vec sum{};  // each padded key adds e^-87.3, far below the sum's rounding; P.V skips them
    for (int64_t c = 0; c < chunks; ++c) {
      const vec e = exp_neg(load(sr + c * CHUNK) - mx);
      store(sr + c * CHUNK, e);
      sum += e;
    }
    inv[r] = 1.f / hsum(sum);
  }
  vec acc[R][NV] = {};
  for (int64_t j = 0; j < T; ++j) {
    const float* vj = tok + j * stride + 2 * H + off;
    const float* pj = s + (j / W) * CHUNK + j % W;
    vec v[NV];
    for (int u = 0; u < NV; ++u) v[u] = load(vj + u * W);
    for (int r = 0; r < R; ++r) {
      const float p = pj[r * W];
      for (int u = 0; u < NV; ++u) acc[r][u] += p * v[u];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) store(out + (i0 + r) * H + off + u * W, acc[r][u] * inv[r]);
}

// One head of one sequence: out rows (i, off:off+hd) = softmax(q_i K^T) V, q already scaled by 1/sqrt(hd).
// tok: the sequence's first row of the fused (T, 3H) q|k|v projection. kt: hd*Tp floats, s: ROWS*Tp floats
// (Tp: T rounded up to whole chunks of KEYS keys).
// Both products are register blocks as in the GEMMs below: query rows in blocks of up to ROWS, each
// block's scores against KEYS keys at a time (q_i K^T with K transposed once), then P.V with the block's
// ROWS x hd outputs in registers while the rows of V stream past.
template <int64_t hd>
void attend_head(const float* tok, int64_t T, int64_t H, int64_t off, float* out, float* kt, float* s) {
  using S = HeadShape<hd>;
  const int64_t stride = 3 * H, Tp = S::padded(T);
  for (int64_t j0 = 0; j0 < Tp; j0 += W)  // K^T, W keys x W dims at a time, zero past the last key
    for (int64_t d0 = 0; d0 < hd; d0 += W) {
      vec rows[W];
      for (int64_t j = 0; j < W; ++j) rows[j] = j0 + j < T ? load(tok + (j0 + j) * stride + H + off + d0) : vec{};
      transpose(rows);
      for (int64_t d = 0; d < W; ++d) store(kt + (d0 + d) * Tp + j0, rows[d]);
    }
  const int64_t blocks = (T + S::ROWS - 1) / S::ROWS;  // as even as possible: 25 rows as 9 + 8 + 8
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t i0 = i * T / blocks;
    with_rows<S::ROWS>(static_cast<int>((i + 1) * T / blocks - i0), [&](auto rows) {
      attend_rows<hd, decltype(rows)::value>(tok, T, Tp, stride, H, off, i0, out, kt, s);
    });
  }
}

// Work items (sequence, head), split into one contiguous range per thread of about equal cost: a
// sequence of T tokens costs about T (T + hd) (the score and P.V blocks, the softmax), so an even split
// of the items would leave one thread waiting where the long sentences fall in one half of the batch.
template <int64_t hd>
void attention_heads(const float* qkv, float* out, const int64_t* start, const int64_t* len, int64_t B,
                     int64_t heads, int64_t longest) {
  const int64_t H = heads * hd, Tp = HeadShape<hd>::padded(longest);
  const int64_t parts = std::min<int64_t>(at::get_num_threads(), B * heads);
  std::vector<double> before(B + 1, 0.0);  // cost of sequences 0 .. b-1 (all heads)
  for (int64_t b = 0; b < B; ++b) before[b + 1] = before[b] + static_cast<double>(len[b] * (HeadShape<hd>::padded(len[b]) + hd));
  at::parallel_for(0, parts, 1, [&](int64_t first_part, int64_t end_part) {
    std::vector<float> kt(hd * Tp), scores(HeadShape<hd>::ROWS * Tp);
    for (int64_t part = first_part; part < end_part; ++part) {
      // the items whose cost midpoint falls in this part's share
      const double low = before[B] * part / parts, high = before[B] * (part + 1) / parts;
      for (int64_t bh = 0; bh < B * heads; ++bh) {
        const int64_t b = bh / heads;
        const double per_head = (before[b + 1] - before[b]) / heads;
        const double middle = before[b] + per_head * (bh % heads + 0.5);
        if (middle < low || middle >= high) continue;
        attend_head<hd>(qkv + start[b] * 3 * H, len[b], H, (bh % heads) * hd, out + start[b] * H, kt.data(), scores.data());
      }
    }
  });
}

// Packed rows (n, 3H) of q|k|v -> (n, H): every sequence (rows start[b] .. start[b] + len[b]) attends to itself.
Tensor attention(const Tensor& qkv, const std::vector<int64_t>& start, const std::vector<int64_t>& len,
                 int64_t heads, int64_t hd) {
  Tensor out = at::empty({qkv.size(0), heads * hd}, qkv.options());
  const float* in = qkv.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t B = static_cast<int64_t>(len.size()), longest = *std::max_element(len.begin(), len.end());
  switch (hd) {
#define HEAD_CASE(n) case n: attention_heads<n>(in, o, start.data(), len.data(), B, heads, longest); break;
    HEAD_CASE(16) HEAD_CASE(32) HEAD_CASE(48) HEAD_CASE(64) HEAD_CASE(80) HEAD_CASE(96) HEAD_CASE(112) HEAD_CASE(128)
#undef HEAD_CASE
  }
  return out;
}

// ---- y = epilogue(x W^T + b) ----
constexpr int64_t NR = 2 * W;                   // output columns per panel: two vectors
constexpr int ROW_BLOCK = W == 16 ? 12 : 6;     // 2 * ROW_BLOCK accumulators + 2 panel vectors + 1 broadcast fit the registers
enum Epilogue { NONE = 0, GELU_ERF = 1, RELU = 2 };

inline vec finish(vec v, int epilogue) {
  if (epilogue == GELU_ERF) return gelu_erf(v);
  if (epilogue == RELU) return vmax(v, vec{});
  return v;
}

// weight (N, K) and bias (N,), N a multiple of W -> panels (ceil(N / NR), 1 + K, NR): each panel's first
// row is its bias, then row k holds W[n0 .. n0 + NR, k]; a last half panel (N % NR == W) is zero-filled.
Tensor pack_linear(const Tensor& weight, const Tensor& bias) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.size(0) % W == 0 &&
              bias.numel() == weight.size(0), "pack_linear: float32 (N, K) weight with N a multiple of ", W, ", and (N,) bias");
  const Tensor w = weight.contiguous(), bv = bias.contiguous();
  const int64_t N = w.size(0), K = w.size(1), P = (N + NR - 1) / NR;
  Tensor out = at::zeros({P, 1 + K, NR}, w.options());
  const float *s = w.data_ptr<float>(), *bp = bv.data_ptr<float>();
  float* d = out.data_ptr<float>();
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t cols = std::min(NR, N - p * NR);
      float* panel = d + p * (1 + K) * NR;
      for (int64_t j = 0; j < cols; ++j) {
        panel[j] = bp[p * NR + j];
        for (int64_t k = 0; k < K; ++k) panel[(1 + k) * NR + j] = s[(p * NR + j) * K + k];
      }
    }
  });
  return out;
}

// y (M, N): work items of (group of row blocks, panel), with blocks of at most ROW_BLOCK rows, as even
// as possible (25 rows: 9 + 8 + 8); several groups only where the panels alone would leave threads idle.
// block(first row, rows, panel) computes one block; `rows` is a std::integral_constant (with_rows).
template <typename Block>
void for_blocks(int64_t M, int64_t P, const Block& block) {
  const int64_t blocks = (M + ROW_BLOCK - 1) / ROW_BLOCK;
  const int64_t groups = std::min(blocks, std::max<int64_t>(1, (2 * at::get_num_threads() + P - 1) / P));
  at::parallel_for(0, groups * P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item / P, p = item % P;
      for (int64_t i = g * blocks / groups; i < (g + 1) * blocks / groups; ++i) {
        const int64_t r0 = i * M / blocks;
        with_rows<ROW_BLOCK>(static_cast<int>((i + 1) * M / blocks - r0), [&](auto rows) { block(r0, rows, p); });
      }
    }
  });
}

// MR rows x one panel: c[r, 0 .. NR) (only the first W columns when !both)
template <int MR>
void gemm_block(const float* a, int64_t K, const float* panel, float* c, int64_t ldc, bool both, int epilogue) {
  vec acc0[MR], acc1[MR];
  const vec b0 = load(panel), b1 = load(panel + W);
  for (int r = 0; r < MR; ++r) acc0[r] = b0, acc1[r] = b1;
  const float* p = panel + NR;
  for (int64_t k = 0; k < K; ++k) {
    const vec x0 = load(p + k * NR), x1 = load(p + k * NR + W);
    for (int r = 0; r < MR; ++r) {
      const float s = a[r * K + k];
      acc0[r] += s * x0;
      acc1[r] += s * x1;
    }
  }
  for (int r = 0; r < MR; ++r) {
    store(c + r * ldc, finish(acc0[r], epilogue));
    if (both) store(c + r * ldc + W, finish(acc1[r], epilogue));
  }
}

// x (M, K) contiguous float32, packed from pack_linear for a weight with N rows
Tensor linear(const Tensor& x, const Tensor& packed, int64_t N, int epilogue) {
  const int64_t M = x.size(0), K = x.size(1), P = packed.size(0);
  Tensor y = at::empty({M, N}, x.options());
  if (M == 0) return y;
  const float *a = x.data_ptr<float>(), *b = packed.data_ptr<float>();
  float* c = y.data_ptr<float>();
  for_blocks(M, P, [&](int64_t r0, auto rows, int64_t p) {
    gemm_block<decltype(rows)::value>(a + r0 * K, K, b + p * (1 + K) * NR, c + r0 * N + p * NR, N, (p + 1) * NR <= N, epilogue);
  });
  return y;
}

// ---- the same in bf16 (AVX512_BF16's dot product of pairs, float32 sums): `--precision bf16` ----
// Inputs and weights are rounded to bf16 (to nearest even) as autocast rounds them; the sums, bias,
// activation and everything outside the matrix multiplies stay float32.

bool bf16_supported() {
#if AVX512_KERNELS
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

// weight (N, K), K even, N a multiple of W -> (ceil(N / NR), K / 2, NR, 2) bf16: panel p, pair kk,
// column j holds W[n0 + j, 2 kk] and W[n0 + j, 2 kk + 1] side by side, as the dot-product instruction
// reads them; and the bias as float32 (ceil(N / NR) * NR), zero past N.
std::tuple<Tensor, Tensor> pack_linear_bf16(const Tensor& weight, const Tensor& bias) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.size(0) % W == 0 &&
              weight.size(1) % 2 == 0 && bias.numel() == weight.size(0),
              "pack_linear_bf16: float32 (N, K) weight with N a multiple of ", W, " and K even, and (N,) bias");
  const Tensor w = weight.to(at::kBFloat16).contiguous();
  const int64_t N = w.size(0), K = w.size(1), P = (N + NR - 1) / NR;
  Tensor out = at::zeros({P, K / 2, NR, 2}, w.options());
  Tensor padded_bias = at::zeros({P * NR}, bias.options());
  padded_bias.narrow(0, 0, N).copy_(bias);
  const at::BFloat16* s = w.data_ptr<at::BFloat16>();
  at::BFloat16* d = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t j = 0; j < std::min(NR, N - p * NR); ++j)
        for (int64_t k = 0; k < K; ++k) d[((p * (K / 2) + k / 2) * NR + j) * 2 + k % 2] = s[(p * NR + j) * K + k];
  });
  return {out, padded_bias};
}

#if AVX512_KERNELS
template <int MR>
BF16_TARGET void gemm_block_bf16(const uint16_t* a, int64_t K, const uint16_t* panel, const float* bias, float* c,
                                 int64_t ldc, bool both, int epilogue) {
  __m512 acc0[MR], acc1[MR];
  const __m512 b0 = _mm512_loadu_ps(bias), b1 = _mm512_loadu_ps(bias + W);
  for (int r = 0; r < MR; ++r) acc0[r] = b0, acc1[r] = b1;
  for (int64_t kk = 0; kk < K / 2; ++kk) {
    const __m512bh x0 = (__m512bh)_mm512_loadu_si512(panel + kk * 2 * NR);
    const __m512bh x1 = (__m512bh)_mm512_loadu_si512(panel + kk * 2 * NR + 2 * W);
    for (int r = 0; r < MR; ++r) {
      int32_t pair;  // a[r, 2 kk] and a[r, 2 kk + 1]
      std::memcpy(&pair, a + r * K + 2 * kk, sizeof pair);
      const __m512bh s = (__m512bh)_mm512_set1_epi32(pair);
      acc0[r] = _mm512_dpbf16_ps(acc0[r], s, x0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], s, x1);
    }
  }
  for (int r = 0; r < MR; ++r) {
    store(c + r * ldc, finish((vec)acc0[r], epilogue));
    if (both) store(c + r * ldc + W, finish((vec)acc1[r], epilogue));
  }
}
#endif

// x (M, K) contiguous float32; packed, bias from pack_linear_bf16 for a weight with N rows
Tensor linear_bf16(const Tensor& x, const Tensor& packed, const Tensor& bias, int64_t N, int epilogue) {
#if AVX512_KERNELS
  const int64_t M = x.size(0), K = x.size(1), P = packed.size(0);
  Tensor y = at::empty({M, N}, x.options());
  if (M == 0) return y;
  const Tensor xb = x.to(at::kBFloat16);
  const auto* a = reinterpret_cast<const uint16_t*>(xb.data_ptr<at::BFloat16>());
  const auto* b = reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>());
  const float* bp = bias.data_ptr<float>();
  float* c = y.data_ptr<float>();
  for_blocks(M, P, [&](int64_t r0, auto rows, int64_t p) {
    gemm_block_bf16<decltype(rows)::value>(a + r0 * K, K, b + p * K * NR, bp + p * NR, c + r0 * N + p * NR, N, (p + 1) * NR <= N, epilogue);
  });
  return y;
#else
  TORCH_CHECK(false, "bf16 kernels are not compiled in this build");
#endif
}

// ---- the same in int8 (VNNI's u8 x s8 dot product of quads, int32 sums): `--quantize int8` ----
// bertkit/cpu/int8.py's recipe, on the same numbers: weights int8 per output channel (as its
// Int8Linear holds them), activations int8 per row (step max |x| / 127, rounded to nearest even), exact
// int32 sums, then float32: * the row's max |x| * the channel's weight step / 127, + the bias. The
// instruction multiplies unsigned by signed bytes, so a row goes in as q + 128 and 128 * (the
// channel's weight sum) is taken off the sums.

bool int8_supported() {
#if AVX512_KERNELS
  return __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

// weight_int8 (K, N) (Int8Linear's transposed weight), K a multiple of 4, N of W; output_scale, bias (N,)
// -> panels (ceil(N / NR), K / 4, NR, 4) int8 (panel p, quad kq, column j: W[n0 + j, 4 kq .. 4 kq + 4)),
// float32 (2, ceil(N / NR) * NR) (the bias, the output scale) and int32 (ceil(N / NR) * NR): 128 * the
// channel's weight sum; zero past N.
std::tuple<Tensor, Tensor, Tensor> pack_linear_int8(const Tensor& weight_t, const Tensor& output_scale, const Tensor& bias) {
  TORCH_CHECK(weight_t.dim() == 2 && weight_t.scalar_type() == at::kChar && weight_t.size(0) % 4 == 0 &&
              weight_t.size(1) % W == 0 && output_scale.numel() == weight_t.size(1) && bias.numel() == weight_t.size(1),
              "pack_linear_int8: int8 (K, N) weight with K a multiple of 4 and N of ", W, ", and (N,) scales and bias");
  const Tensor w = weight_t.contiguous();
  const int64_t K = w.size(0), N = w.size(1), P = (N + NR - 1) / NR;
  Tensor out = at::zeros({P, K / 4, NR, 4}, w.options());
  Tensor factors = at::zeros({2, P * NR}, output_scale.options().dtype(at::kFloat));
  factors[0].narrow(0, 0, N).copy_(bias);
  factors[1].narrow(0, 0, N).copy_(output_scale);
  Tensor sums = at::zeros({P * NR}, w.options().dtype(at::kInt));
  const int8_t* s = w.data_ptr<int8_t>();
  int8_t* d = out.data_ptr<int8_t>();
  int32_t* sp = sums.data_ptr<int32_t>();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t p = n / NR, j = n % NR;
    int32_t sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      d[((p * (K / 4) + k / 4) * NR + j) * 4 + k % 4] = s[k * N + n];
      sum += s[k * N + n];
    }
    sp[n] = 128 * sum;
  }
  return {out, factors, sums};
}

#if AVX512_KERNELS
// rows of x (M, K) -> q + 128 as bytes (M, K), and each row's max |x| (at least 1e-12), as Int8Linear
VNNI_TARGET void quantize_rows(const float* x, int64_t M, int64_t K, uint8_t* q, float* row_max) {
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = x + r * K;
      __m512 m = _mm512_setzero_ps();
      for (int64_t k = 0; k < K; k += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(row + k)));
      const float mx = std::max(_mm512_reduce_max_ps(m), 1e-12f);
      row_max[r] = mx;
      const __m512 inv = _mm512_set1_ps(127.0f / mx);
      const __m512i bias = _mm512_set1_epi32(128);
      for (int64_t k = 0; k < K; k += 16) {  // x * (127 / max) rounded to nearest even (MXCSR's default), + 128
        const __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + k), inv)), bias);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + r * K + k), _mm512_cvtepi32_epi8(v));
      }
    }
  });
}

template <int MR>
VNNI_TARGET void gemm_block_int8(const uint8_t* a, int64_t K, const int8_t* panel, const float* factors, int64_t stride,
                                 const int32_t* sums, const float* row_max, float* c, int64_t ldc, bool both, int epilogue) {
  __m512i acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm512_setzero_si512();
  for (int64_t kq = 0; kq < K / 4; ++kq) {
    const __m512i x0 = _mm512_loadu_si512(panel + kq * 4 * NR), x1 = _mm512_loadu_si512(panel + kq * 4 * NR + 4 * W);
    for (int r = 0; r < MR; ++r) {
      int32_t quad;  // a[r, 4 kq .. 4 kq + 4)
      std::memcpy(&quad, a + r * K + 4 * kq, sizeof quad);
      const __m512i s = _mm512_set1_epi32(quad);
      acc0[r] = _mm512_dpbusd_epi32(acc0[r], s, x0);
      acc1[r] = _mm512_dpbusd_epi32(acc1[r], s, x1);
    }
  }
  const __m512 bias0 = _mm512_loadu_ps(factors), bias1 = _mm512_loadu_ps(factors + W);
  const __m512 scale0 = _mm512_loadu_ps(factors + stride), scale1 = _mm512_loadu_ps(factors + stride + W);
  const __m512i sum0 = _mm512_loadu_si512(sums), sum1 = _mm512_loadu_si512(sums + W);
  for (int r = 0; r < MR; ++r) {
    const __m512 step = _mm512_set1_ps(row_max[r]);
    const __m512 y0 = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc0[r], sum0)), step), scale0);
    store(c + r * ldc, finish((vec)_mm512_add_ps(y0, bias0), epilogue));
    if (both) {
      const __m512 y1 = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc1[r], sum1)), step), scale1);
      store(c + r * ldc + W, finish((vec)_mm512_add_ps(y1, bias1), epilogue));
    }
  }
}
#endif

// x (M, K) contiguous float32; packed, factors, sums from pack_linear_int8 for a weight with N outputs
Tensor linear_int8(const Tensor& x, const Tensor& packed, const Tensor& factors, const Tensor& sums, int64_t N, int epilogue) {
#if AVX512_KERNELS
  const int64_t M = x.size(0), K = x.size(1), P = packed.size(0);
  Tensor y = at::empty({M, N}, x.options());
  if (M == 0) return y;
  std::vector<uint8_t> q(M * K);
  std::vector<float> row_max(M);
  quantize_rows(x.data_ptr<float>(), M, K, q.data(), row_max.data());
  const int8_t* b = packed.data_ptr<int8_t>();
  const float* f = factors.data_ptr<float>();
  const int32_t* sp = sums.data_ptr<int32_t>();
  float* c = y.data_ptr<float>();
  for_blocks(M, P, [&](int64_t r0, auto rows, int64_t p) {
    gemm_block_int8<decltype(rows)::value>(q.data() + r0 * K, K, b + p * K * NR, f + p * NR, P * NR, sp + p * NR, row_max.data() + r0,
                            c + r0 * N + p * NR, N, (p + 1) * NR <= N, epilogue);
  });
  return y;
#else
  TORCH_CHECK(false, "int8 kernels are not compiled in this build");
#endif
}

// The model's Linear layers as the kernels hold them, each a list: {float32 panels (bias inside)},
// {bf16 panels, bias} or {int8 panels, bias and scales, weight sums}: what pack_linear,
// pack_linear_bf16 and pack_linear_int8 return.
struct Linears {
  const std::vector<std::vector<Tensor>>& parts;
  const std::vector<int64_t>& widths;
  Tensor operator()(const Tensor& x, size_t i, int epilogue) const {
    const std::vector<Tensor>& p = parts[i];
    switch (p[0].scalar_type()) {
      case at::kBFloat16: return linear_bf16(x, p[0], p[1], widths[i], epilogue);
      case at::kChar: return linear_int8(x, p[0], p[1], p[2], widths[i], epilogue);
      default: return linear(x, p[0], widths[i], epilogue);
    }
  }
};

// Where encode's time goes, for benchmarks/profile_ops.py: off unless asked (one relaxed load per step).
enum Stage { GEMM = 0, ATTENTION, LAYER_NORM, EMBEDDING, OTHER, STAGES };
std::atomic<bool> profiling{false};
std::mutex stage_lock;
std::array<double, STAGES> stage_seconds{};

struct StageClock {
  const bool on = profiling.load(std::memory_order_relaxed);
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  void mark(Stage stage) {  // the time since the last mark goes to `stage`
    if (!on) return;
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> guard(stage_lock);
    stage_seconds[stage] += std::chrono::duration<double>(now - last).count();
    last = now;
  }
};

Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& rows) {
  return x.index_select(0, at::tensor(rows, at::TensorOptions().dtype(at::kLong)));
}

}  // namespace

// (hidden states (B, T, H), zero at padded positions; pooled (B, H), or (0, H) without a pooler). Row b
// holds len[b] real tokens first (1 <= len[b] <= T). With cls_only the first output is the final [CLS]
// rows (B, H), and the last layer's work after attention runs for them alone.
// ids, segs: contiguous int64 (B, T), T <= max positions; tensors as encoder.py's _EncoderWeights holds
// them: `linears` (4 per layer, then the pooler's) as Linears above, `widths` their output widths.
std::tuple<Tensor, Tensor> encode(const Tensor& ids, const Tensor& segs, const std::vector<int64_t>& len, bool cls_only,
                                  const Tensor& word, const Tensor& segment, const Tensor& position,
                                  const Tensor& emb_w, const Tensor& emb_b, const std::vector<std::vector<Tensor>>& linears,
                                  const std::vector<int64_t>& widths, const std::vector<Tensor>& norms,
                                  int64_t heads, int64_t hd, double eps_d, int64_t activation, bool has_pooler) {
  TORCH_CHECK(hd % HEAD_STEP == 0 && hd <= 8 * HEAD_STEP, "head size ", hd, " is not a multiple of 16 up to 128");
  TORCH_CHECK(ids.dim() == 2 && ids.is_contiguous() && segs.sizes() == ids.sizes() && segs.is_contiguous() &&
              ids.scalar_type() == at::kLong && segs.scalar_type() == at::kLong, "ids and segment ids: contiguous int64 (B, T)");
  const int64_t B = ids.size(0), T = ids.size(1), H = heads * hd;
  TORCH_CHECK(T <= position.size(0), "sequence length ", T, " exceeds ", position.size(0), " positions");
  TORCH_CHECK(static_cast<int64_t>(len.size()) == B && B > 0, "one length per sequence");
  std::vector<int64_t> start(B);
  int64_t n = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(len[b] >= 1 && len[b] <= T, "sequence ", b, ": length ", len[b], " is not in [1, ", T, "]");
    start[b] = n;
    n += len[b];
  }
  const int64_t layers = static_cast<int64_t>(norms.size() / 4);
  const float eps = static_cast<float>(eps_d);
  StageClock clock;
  Tensor x = at::empty({n, H}, word.options());
  {
    const int64_t *ip = ids.data_ptr<int64_t>(), *sp = segs.data_ptr<int64_t>();
    const float *wp = word.data_ptr<float>(), *gp = segment.data_ptr<float>(), *pp = position.data_ptr<float>();
    float* xp = x.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < len[b]; ++t) {
        const int64_t id = ip[b * T + t], seg = sp[b * T + t];
        TORCH_CHECK_INDEX(id >= 0 && id < word.size(0), "token id ", id, " is out of range [0, ", word.size(0), ")");
        TORCH_CHECK_INDEX(seg >= 0 && seg < segment.size(0), "segment id ", seg, " is out of range [0, ", segment.size(0), ")");
        const float *e = wp + id * H, *g = gp + seg * H, *q = pp + t * H;
        float* row = xp + (start[b] + t) * H;
        for (int64_t j = 0; j < H; j += W) store(row + j, load(e + j) + load(g + j) + load(q + j));
      }
    add_layer_norm(xp, nullptr, emb_w.data_ptr<float>(), emb_b.data_ptr<float>(), n, H, eps);
  }
  clock.mark(EMBEDDING);
  for (const auto& parts : linears) {
    TORCH_CHECK(parts[0].scalar_type() != at::kBFloat16 || bf16_supported(), "this CPU has no AVX512_BF16 instructions");
    TORCH_CHECK(parts[0].scalar_type() != at::kChar || int8_supported(), "this CPU has no AVX512_VNNI instructions");
  }
  const Linears linear{linears, widths};
  const int ffn_epilogue = activation == 0 ? GELU_ERF : activation == 2 ? RELU : NONE;
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t i = 4 * l;
    const Tensor qkv = linear(x, i, NONE);
    clock.mark(GEMM);
    Tensor a = attention(qkv, start, len, heads, hd);
    clock.mark(ATTENTION);
    if (cls_only && l == layers - 1) {
      a = gather_rows(a, start);
      x = gather_rows(x, start);
      clock.mark(OTHER);
    }
    Tensor y = linear(a, i + 1, NONE);
    clock.mark(GEMM);
    add_layer_norm(y.data_ptr<float>(), x.data_ptr<float>(), norms[i].data_ptr<float>(), norms[i + 1].data_ptr<float>(), y.size(0), H, eps);
    clock.mark(LAYER_NORM);
    x = y;
    Tensor f = linear(x, i + 2, ffn_epilogue);  // GELU / ReLU inside: counted as GEMM
    clock.mark(GEMM);
    if (activation == 1) at::gelu_(f, "tanh");
    clock.mark(OTHER);
    y = linear(f, i + 3, NONE);
    clock.mark(GEMM);
    add_layer_norm(y.data_ptr<float>(), x.data_ptr<float>(), norms[i + 2].data_ptr<float>(), norms[i + 3].data_ptr<float>(), y.size(0), H, eps);
    clock.mark(LAYER_NORM);
    x = y;
  }
  const bool padded = n < B * T;
  Tensor seq;
  if (cls_only) seq = x;
  else if (!padded) seq = x.view({B, T, H});
  else {
    seq = at::zeros({B, T, H}, x.options());
    for (int64_t b = 0; b < B; ++b) seq[b].narrow(0, 0, len[b]).copy_(x.narrow(0, start[b], len[b]));
  }
  clock.mark(OTHER);
  if (!has_pooler) return {seq, at::empty({0, H}, x.options())};
  Tensor pooled = linear(cls_only ? x : gather_rows(x, start), 4 * layers, NONE);
  clock.mark(GEMM);
  pooled.tanh_();
  clock.mark(OTHER);
  return {seq, pooled};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // no Python object is touched inside: other threads (the server's event loop) run meanwhile
  m.def("encode", &encode, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("pack_linear", &pack_linear, pybind11::call_guard<pybind11::gil_scoped_release>());
  // one Linear on packed weights (benchmarks/native_gemm.py); epilogue 0 none, 1 erf-GELU, 2 ReLU
  m.def("linear", [](const Tensor& x, const std::vector<Tensor>& parts, int64_t width, int64_t epilogue) {
    TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat, "x: contiguous float32 (M, K)");
    return Linears{{parts}, {width}}(x, 0, static_cast<int>(epilogue));
  }, pybind11::call_guard<pybind11::gil_scoped_release>());
  // attention over packed q|k|v rows (n, 3H) of sequences of these lengths (benchmarks/native_attention.py)
  m.def("attention", [](const Tensor& qkv, const std::vector<int64_t>& len, int64_t heads) {
    TORCH_CHECK(heads > 0 && qkv.dim() == 2 && qkv.is_contiguous() && qkv.scalar_type() == at::kFloat &&
                qkv.size(1) % (3 * heads) == 0, "qkv: contiguous float32 (n, 3 * heads * head size)");
    std::vector<int64_t> start(len.size());
    int64_t n = 0;
    for (size_t b = 0; b < len.size(); ++b) {
      TORCH_CHECK(len[b] >= 1, "sequence ", b, ": length ", len[b], " is not at least 1");
      start[b] = n, n += len[b];
    }
    TORCH_CHECK(n == qkv.size(0) && !len.empty(), "the lengths must add up to qkv's rows");
    const int64_t hd = qkv.size(1) / (3 * heads);
    TORCH_CHECK(hd % HEAD_STEP == 0 && hd <= 8 * HEAD_STEP, "head size ", hd, " is not a multiple of 16 up to 128");
    return attention(qkv, start, len, heads, hd);
  }, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("pack_linear_bf16", &pack_linear_bf16, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("pack_linear_int8", &pack_linear_int8, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("bf16_supported", &bf16_supported);
  m.def("set_profiling", [](bool on) { profiling = on; });
  m.def("stage_seconds", []() {  // seconds per stage since the last call (and zero them)
    std::lock_guard<std::mutex> guard(stage_lock);
    std::map<std::string, double> out{{"GEMM", stage_seconds[GEMM]}, {"attention", stage_seconds[ATTENTION]},
                                      {"LayerNorm", stage_seconds[LAYER_NORM]}, {"embedding", stage_seconds[EMBEDDING]},
                                      {"other ops", stage_seconds[OTHER]}};
    stage_seconds.fill(0.0);
    return out;
  });
  m.def("int8_supported", &int8_supported);
}
