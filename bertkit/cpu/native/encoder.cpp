// BERT's encoder and pooler (bertkit/model.py's BertModel.forward) in C++, for one short unpadded
// batch on the CPU. Built on the user's machine by bertkit/cpu/native/encoder.py (torch.utils.cpp_extension).
//
// Why: at one sentence of ~25 tokens the GEMMs (MKL's packed sgemm, as packed_linear.py) are two thirds
// of the time, and what remains is many small operations, each a pass over memory and a thread
// fork/join. Here attention, residual add + LayerNorm, GELU and the embedding sum are single passes
// over vectors held in registers:
// - attention per (sequence, head): K transposed once, query rows in blocks whose accumulators stay in
//   registers, softmax with a polynomial exp, P.V accumulated in registers (no (T, T) tensor per head
//   in memory, no bmm dispatch);
// - add + LayerNorm in one pass per row; erf-GELU by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7).
// Vectors are GCC/Clang vector extensions as wide as the instruction set the loader compiles for
// (PyTorch's own CPU capability): 16 floats with AVX-512, 8 with AVX2, 4 otherwise. A vector wider
// than the target's registers is not split well by the compiler (AVX2 ran at half speed with 16).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

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

void apply_gelu(Tensor& x) {  // x contiguous, numel a multiple of W
  float* p = x.data_ptr<float>();
  at::parallel_for(0, x.numel() / W, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) store(p + i * W, gelu_erf(load(p + i * W)));
  });
}

// One head of one sequence: out rows (i, off:off+hd) = softmax(q_i K^T) V, q already scaled by 1/sqrt(hd).
// tok: the sequence's first row of the fused (T, 3H) q|k|v projection. kt: hd*Tp floats, s: 4*Tp floats.
template <int64_t hd>
void attend_head(const float* tok, int64_t T, int64_t H, int64_t off, float* out, float* kt, float* s) {
  constexpr int NV = hd / W;  // vectors per head row
  // query rows per block: as many as keep R * NV accumulators and NV loaded values in registers
  constexpr int REGISTERS = W == 16 ? 32 : 16;
  constexpr int R = 5 * NV <= REGISTERS - 2 ? 4 : 3 * NV <= REGISTERS - 2 ? 2 : 1;
  const int64_t stride = 3 * H, Tp = (T + W - 1) / W * W;
  for (int64_t j = 0; j < Tp; ++j)  // K^T, zero-padded to whole vectors of keys
    for (int64_t d = 0; d < hd; ++d) kt[d * Tp + j] = j < T ? tok[j * stride + H + off + d] : 0.f;
  for (int64_t i0 = 0; i0 < T; i0 += R) {
    const int rows = static_cast<int>(std::min<int64_t>(R, T - i0));
    const float* q[R];
    for (int r = 0; r < R; ++r) q[r] = tok + std::min<int64_t>(i0 + r, T - 1) * stride + off;
    for (int64_t c = 0; c < Tp; c += W) {  // scores of R query rows against W keys at a time
      vec a[R] = {};
      for (int64_t d = 0; d < hd; ++d) {
        const vec k = load(kt + d * Tp + c);
        for (int r = 0; r < R; ++r) a[r] += q[r][d] * k;
      }
      for (int r = 0; r < R; ++r) store(s + r * Tp + c, a[r]);
    }
    float inv[R];
    for (int r = 0; r < rows; ++r) {  // softmax numerators in place, and 1 / their sum
      float* sr = s + r * Tp;
      for (int64_t j = T; j < Tp; ++j) sr[j] = -std::numeric_limits<float>::infinity();
      vec m = load(sr);
      for (int64_t c = W; c < Tp; c += W) m = vmax(m, load(sr + c));
      const float mx = hmax(m);
      vec sum{};  // each padded key adds e^-87.3, far below the sum's rounding; P.V skips them
      for (int64_t c = 0; c < Tp; c += W) {
        const vec e = exp_neg(load(sr + c) - mx);
        store(sr + c, e);
        sum += e;
      }
      inv[r] = 1.f / hsum(sum);
    }
    vec acc[R][NV] = {};
    for (int64_t j = 0; j < T; ++j) {
      const float* vj = tok + j * stride + 2 * H + off;
      vec v[NV];
      for (int u = 0; u < NV; ++u) v[u] = load(vj + u * W);
      for (int r = 0; r < R; ++r) {
        const float p = s[r * Tp + j];
        for (int u = 0; u < NV; ++u) acc[r][u] += p * v[u];
      }
    }
    for (int r = 0; r < rows; ++r)
      for (int u = 0; u < NV; ++u) store(out + (i0 + r) * H + off + u * W, acc[r][u] * inv[r]);
  }
}

template <int64_t hd>
void attention_heads(const float* qkv, float* out, int64_t B, int64_t T, int64_t heads) {
  const int64_t H = heads * hd, Tp = (T + W - 1) / W * W;
  at::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kt(hd * Tp), scores(4 * Tp);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, off = (bh % heads) * hd;
      attend_head<hd>(qkv + b * T * 3 * H, T, H, off, out + b * T * H, kt.data(), scores.data());
    }
  });
}

Tensor attention(const Tensor& qkv, int64_t B, int64_t T, int64_t heads, int64_t hd) {
  Tensor out = at::empty({B * T, heads * hd}, qkv.options());
  const float* in = qkv.data_ptr<float>();
  float* o = out.data_ptr<float>();
  switch (hd) {
    case 16: attention_heads<16>(in, o, B, T, heads); break;
    case 32: attention_heads<32>(in, o, B, T, heads); break;
    case 48: attention_heads<48>(in, o, B, T, heads); break;
    case 64: attention_heads<64>(in, o, B, T, heads); break;
    case 80: attention_heads<80>(in, o, B, T, heads); break;
    case 96: attention_heads<96>(in, o, B, T, heads); break;
    case 112: attention_heads<112>(in, o, B, T, heads); break;
    case 128: attention_heads<128>(in, o, B, T, heads); break;
  }
  return out;
}

Tensor mkl_linear(const Tensor& x, const Tensor& packed, const Tensor& w, const Tensor& b) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkl::_mkl_linear", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&, int64_t)>();
  return op.call(x, packed, w, b, x.size(0));
}

Tensor cls_rows(const Tensor& x, int64_t B, int64_t T) { return x.view({B, T, x.size(1)}).select(1, 0).contiguous(); }

void check_ids(const Tensor& ids, int64_t limit, const char* what) {
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < limit, what, " ", p[i], " is out of range [0, ", limit, ")");
}

}  // namespace

// (hidden states (B, T, H), pooled (B, H) or (0, H) without a pooler); with cls_only the first output
// is the final [CLS] rows (B, H) and the last layer's work after attention runs for them alone.
// ids, segs: contiguous int64 (B, T), T <= max positions; tensors as encoder.py's _EncoderWeights holds them.
std::tuple<Tensor, Tensor> encode(const Tensor& ids, const Tensor& segs, bool cls_only,
                                  const Tensor& word, const Tensor& segment, const Tensor& position,
                                  const Tensor& emb_w, const Tensor& emb_b,
                                  const std::vector<Tensor>& packed, const std::vector<Tensor>& weights,
                                  const std::vector<Tensor>& biases, const std::vector<Tensor>& norms,
                                  int64_t heads, int64_t hd, double eps_d, int64_t activation, bool has_pooler) {
  TORCH_CHECK(hd % HEAD_STEP == 0 && hd <= 8 * HEAD_STEP, "head size ", hd, " is not a multiple of 16 up to 128");
  TORCH_CHECK(ids.dim() == 2 && ids.is_contiguous() && segs.sizes() == ids.sizes() && segs.is_contiguous() &&
              ids.scalar_type() == at::kLong && segs.scalar_type() == at::kLong, "ids and segment ids: contiguous int64 (B, T)");
  TORCH_CHECK(ids.size(1) <= position.size(0), "sequence length ", ids.size(1), " exceeds ", position.size(0), " positions");
  check_ids(ids, word.size(0), "token id");
  check_ids(segs, segment.size(0), "segment id");
  const int64_t B = ids.size(0), T = ids.size(1), H = heads * hd, n = B * T;
  const int64_t layers = static_cast<int64_t>(norms.size() / 4);
  const float eps = static_cast<float>(eps_d);
  Tensor x = at::empty({n, H}, word.options());
  {
    const int64_t* ip = ids.data_ptr<int64_t>();
    const int64_t* sp = segs.data_ptr<int64_t>();
    const float *wp = word.data_ptr<float>(), *gp = segment.data_ptr<float>(), *pp = position.data_ptr<float>();
    float* xp = x.data_ptr<float>();
    for (int64_t r = 0; r < n; ++r) {
      const float *a = wp + ip[r] * H, *g = gp + sp[r] * H, *q = pp + (r % T) * H;
      for (int64_t j = 0; j < H; j += W) store(xp + r * H + j, load(a + j) + load(g + j) + load(q + j));
    }
    add_layer_norm(xp, nullptr, emb_w.data_ptr<float>(), emb_b.data_ptr<float>(), n, H, eps);
  }
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t i = 4 * l;
    Tensor a = attention(mkl_linear(x, packed[i], weights[i], biases[i]), B, T, heads, hd);
    if (cls_only && l == layers - 1) {
      a = cls_rows(a, B, T);
      x = cls_rows(x, B, T);
    }
    Tensor y = mkl_linear(a, packed[i + 1], weights[i + 1], biases[i + 1]);
    add_layer_norm(y.data_ptr<float>(), x.data_ptr<float>(), norms[i].data_ptr<float>(), norms[i + 1].data_ptr<float>(), y.size(0), H, eps);
    x = y;
    Tensor f = mkl_linear(x, packed[i + 2], weights[i + 2], biases[i + 2]);
    if (activation == 0) apply_gelu(f);
    else if (activation == 1) at::gelu_(f, "tanh");
    else f.relu_();
    y = mkl_linear(f, packed[i + 3], weights[i + 3], biases[i + 3]);
    add_layer_norm(y.data_ptr<float>(), x.data_ptr<float>(), norms[i + 2].data_ptr<float>(), norms[i + 3].data_ptr<float>(), y.size(0), H, eps);
    x = y;
  }
  Tensor seq = cls_only ? x : x.view({B, T, H});
  if (!has_pooler) return {seq, at::empty({0, H}, x.options())};
  Tensor pooled = mkl_linear(cls_only ? x : cls_rows(x, B, T), packed[4 * layers], weights[4 * layers], biases[4 * layers]);
  return {seq, pooled.tanh_()};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // no Python object is touched inside: other threads (the server's event loop) run meanwhile
  m.def("encode", &encode, pybind11::call_guard<pybind11::gil_scoped_release>());
}
