// The per-layer time loop of `fused` (impls/fused.py), forward and backward, in C++.
//
// Per step: one GEMM (oneDNN-prepacked, ATen's addmm, or for tiny sizes a plain loop that costs
// less than a library call) and ONE pointwise pass that does all the gate math. On the CPU in
// float32/float64 the pointwise pass is hand-written here (vectorised by the compiler, threaded
// over batch rows when a step is big enough); on any other device or dtype it is the same few
// ATen operations the Python loop calls, so the loop runs with CUDA tensors too.
//
// Buffer layout (all contiguous, made by impls/fused.py): gates [T, B, 4H] in gate order o, i, f, g
// (input projections on entry, activated gates on exit), h and c [T+1, B, H] with row 0 the
// initial state, tanh_c [T, B, H], d_gates [T, B, 4H] in canonical order i, f, g, o.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>

// MKL's packed GEMM (the API it has for RNNs: a weight packed once, then small products on it
// with next to no per-call cost). PyTorch's x86 builds link MKL and export these; declared weak so
// the library still loads on a build without MKL, where mkl_packed_available() says no.
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

// oneDNN's matmul as PyTorch's addmm calls it for half-precision types (aten/src/ATen/native/mkldnn/Matmul.cpp):
// float32 too, in full precision unless the process asked for bf32/tf32, on operands that are contiguous or
// a transposed view, into a given output. What `fused` wants for its weight gradients: oneDNN's GEMM reading
// the transposed view of dA as it is (oneDNN's linear wants it copied, and MKL runs a transposed A at 0.9x).
// Not in PyTorch's public headers: declared here, weak, so the library loads without it and has_dnn_matmul()
// says no.
namespace at::native {
void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result, float beta, float alpha)
    __attribute__((weak));
}

namespace {

// kLoopBatch: the own kernel with the batch split between threads for the whole loop (over_batch).
enum GemmMode : int64_t { kAten = 0, kPacked = 1, kLoop = 2, kMkl = 3, kLoopBatch = 4 };
bool own_kernel(int64_t gemm) { return gemm == kLoop || gemm == kLoopBatch; }
// CBLAS constants (mkl_cblas.h).
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPackedOperand = 151, kBMatrix = 162;

bool mkl_packed_available() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

// c [m, n] = beta * c + a [m, k] @ B, B packed by mkl_pack.
inline void mkl_gemm(const float* a, const float* packed, float* c, int64_t m, int64_t n, int64_t k, float beta) {
  cblas_sgemm_compute(kRowMajor, kNoTrans, kPackedOperand, static_cast<int>(m), static_cast<int>(n),
                      static_cast<int>(k), a, static_cast<int>(k), packed, static_cast<int>(n), beta, c,
                      static_cast<int>(n));
}

// A step is split over threads only when it has at least this many cells (B * H): an OpenMP
// fork/join costs a few microseconds, about what a step of 8192 cells takes on one core. Set from
// that estimate; on the 2-core CPU threading it at batch 20 x hidden 512 gave 0.89 vs 0.92 (batch
// 20 x 100) and 0.81 vs 0.86 (20 x 20) of cudnn's total, against not threading (two A/B runs each).
constexpr int64_t kParallelCells = 8192;

// exp, sigmoid and tanh the compiler can vectorise: Cephes' single-precision polynomials (about
// 1 ulp; libm's scalar expf would cost more than the rest of the step). NaN propagates: clamps are
// written as comparisons, which are false for NaN.
inline float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  x = x - n * 0.693359375f;
  x = x + n * 2.12194440e-4f;
  const float z = x * x;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  // For NaN input y is NaN already; the exponent is made from 0 then (a NaN cast to int is undefined).
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n == n ? n : 0.0f) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

inline float tanh_approx(float x) {
  const float a = std::fabs(x);
  const float z = a * a;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float near_zero = p * z * a + a;
  const float far = 1.0f - 2.0f / (exp_approx(2.0f * a) + 1.0f);
  return std::copysign(a < 0.625f ? near_zero : far, x);
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float tanh_(float x) { return tanh_approx(x); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

bool hand_written_pointwise(const at::Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

template <typename F>
void over_rows(int64_t B, int64_t H, const F& rows) {
  if (B * H >= kParallelCells && B > 1) {
    const int64_t grain = std::max<int64_t>(1, kParallelCells / (2 * H));
    at::parallel_for(0, B, grain, rows);
  } else {
    rows(0, B);
  }
}

// ---- forward ---------------------------------------------------------------------------------

// One batch row of a step: pre [4H] (o, i, f, g pre-activations) -> gates (activated), c_next,
// tanh_c, h_next. A function of its own with restrict pointers, so the compiler vectorises it.
// kAdd: the pre-activation is p + g (the product alone in p, the input projection still in g).
template <typename T, bool kAdd>
void forward_row(const T* __restrict p, T* __restrict g, const T* __restrict c_prev, T* __restrict c_next,
                 T* __restrict tanh_c, T* __restrict h_next, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T zo = kAdd ? p[j] + g[j] : p[j], zi = kAdd ? p[H + j] + g[H + j] : p[H + j];
    const T zf = kAdd ? p[2 * H + j] + g[2 * H + j] : p[2 * H + j], zu = kAdd ? p[3 * H + j] + g[3 * H + j] : p[3 * H + j];
    const T o = sigmoid(zo), i = sigmoid(zi), f = sigmoid(zf), u = tanh_(zu);
    g[j] = o;
    g[H + j] = i;
    g[2 * H + j] = f;
    g[3 * H + j] = u;
    const T c = f * c_prev[j] + i * u;
    const T tc = tanh_(c);
    c_next[j] = c;
    tanh_c[j] = tc;
    h_next[j] = o * tc;
  }
}

template <typename T, bool kAdd = false>
void forward_cell(const T* pre, T* gates, const T* c_prev, T* c_next, T* tanh_c, T* h_next, int64_t B, int64_t H) {
  over_rows(B, H, [=](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      forward_row<T, kAdd>(pre + b * 4 * H, gates + b * 4 * H, c_prev + b * H, c_next + b * H, tanh_c + b * H,
                     h_next + b * H, H);
    }
  });
}

// The loop's own product, out [B, N] = addend + x [B, K] @ w [K, N] (forward: w = W_h^T [H, 4H];
// backward: W_hh [4H, H]), on w packed by own_pack. Register-blocked: a tile of rows x kCols columns
// of `out` is held in vector registers while k runs, so the weight is read once per tile of rows,
// and column block j of w is a contiguous [K, kCols] slab (zero-padded past N), read in order instead
// of striding N elements per k (which costs a TLB entry per row of w at hidden 512). In kLoop the
// column blocks are split over the call's threads when it has more than one (a fork/join is a few
// microseconds; impls/fused_tuning.py decides by measuring); in kLoopBatch the rows are (over_batch).
template <typename T>
struct Block {
#ifdef __AVX512F__
  static constexpr int64_t kCols = 64 / sizeof(T) * 2;  // two 64-byte vectors a row: 8 of 32 registers
#else
  static constexpr int64_t kCols = 32 / sizeof(T) * 2;  // two 32-byte vectors a row: 8 of 16 registers
#endif
};

// One vector register of T: GCC's vector extension, which the compiler maps to the machine's registers
// (split in two where the target's are half as wide).
#ifdef __AVX512F__
constexpr int64_t kVecBytes = 64;
#else
constexpr int64_t kVecBytes = 32;
#endif
#ifdef __AVX512F__
constexpr int64_t kWideRows = 12;  // 24 accumulators + 2 weights of 32 registers
#else
constexpr int64_t kWideRows = 6;  // 12 accumulators + 2 weights of 16 registers
#endif
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(kVecBytes)));
};

// One tile: R rows of x times one slab, into R x kCols accumulators held in registers. (An interleaved
// copy of x, the R values of one k in a cache line, measured no faster: the copy cost what it saved.)
template <typename T, int64_t R>
inline void packed_tile(const T* __restrict addend, const T* __restrict x, const T* __restrict slab, T* __restrict out,
                        int64_t K, int64_t N, int64_t n0, int64_t cols) {
  using V = typename VecOf<T>::type;
  constexpr int64_t L = kVecBytes / static_cast<int64_t>(sizeof(T)), C = Block<T>::kCols;
  static_assert(C == 2 * L, "a column block is two vector registers");
  V acc[R][2];  // R x C accumulators in 2R registers
  // A whole slab (all but the last of a ragged N) loads and stores straight between registers and memory:
  // at K 512 the element-wise start and end cost a fifth of the tile.
  const bool whole = cols == C;
  for (int64_t r = 0; r < R; ++r) {
    if (whole) {
      if (addend != nullptr) {
        std::memcpy(&acc[r][0], addend + r * N + n0, sizeof(V));
        std::memcpy(&acc[r][1], addend + r * N + n0 + L, sizeof(V));
      } else {
        acc[r][0] = V{};
        acc[r][1] = V{};
      }
      continue;
    }
    T start[C];
    for (int64_t n = 0; n < C; ++n) start[n] = (addend != nullptr && n < cols) ? addend[r * N + n0 + n] : T(0);
    std::memcpy(&acc[r][0], start, sizeof(V));
    std::memcpy(&acc[r][1], start + L, sizeof(V));
  }
  for (int64_t k = 0; k < K; ++k) {
    V w0, w1;
    std::memcpy(&w0, slab + k * C, sizeof(V));
    std::memcpy(&w1, slab + k * C + L, sizeof(V));
#pragma GCC unroll 12
    for (int64_t r = 0; r < R; ++r) {
      const T xk = x[r * K + k];
      acc[r][0] += xk * w0;
      acc[r][1] += xk * w1;
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    if (whole) {
      std::memcpy(out + r * N + n0, &acc[r][0], sizeof(V));
      std::memcpy(out + r * N + n0 + L, &acc[r][1], sizeof(V));
      continue;
    }
    T result[C];
    std::memcpy(result, &acc[r][0], sizeof(V));
    std::memcpy(result + L, &acc[r][1], sizeof(V));
    for (int64_t n = 0; n < cols; ++n) out[r * N + n0 + n] = result[n];
  }
}

template <typename T, int64_t R = kWideRows>
inline void packed_tile_of(int64_t rows, const T* addend, const T* x, const T* slab, T* out, int64_t K, int64_t N,
                           int64_t n0, int64_t cols) {
  if constexpr (R > 1) {
    if (rows < R) return packed_tile_of<T, R - 1>(rows, addend, x, slab, out, K, N, n0, cols);
  }
  packed_tile<T, R>(addend, x, slab, out, K, N, n0, cols);
}

// The batch in tiles of near-equal rows, as few as the registers allow (20 rows: 10 + 10, not 12 + 4 + 4).
inline int64_t tile_rows(int64_t B) {
  const int64_t tiles = (B + kWideRows - 1) / kWideRows;
  return (B + tiles - 1) / tiles;
}

// Column blocks j0..j1 of out [B, N] = addend + x [B, K] @ w [K, N], on the calling thread.
template <typename T>
void packed_gemm_blocks(const T* __restrict addend, const T* __restrict x, const T* __restrict packed,
                        T* __restrict out, int64_t B, int64_t K, int64_t N, int64_t j0, int64_t j1) {
  constexpr int64_t C = Block<T>::kCols;
  const int64_t step = tile_rows(B);
  for (int64_t j = j0; j < j1; ++j) {
    const int64_t n0 = j * C, cols = std::min(C, N - n0);
    const T* slab = packed + j * K * C;
    for (int64_t b0 = 0; b0 < B; b0 += step) {
      packed_tile_of<T>(std::min(step, B - b0), addend ? addend + b0 * N : nullptr, x + b0 * K, slab, out + b0 * N,
                        K, N, n0, cols);
    }
  }
}

template <typename T>
int64_t column_blocks(int64_t N) {
  return (N + Block<T>::kCols - 1) / Block<T>::kCols;
}

// The whole product, its column blocks split over `threads`.
template <typename T>
void packed_gemm_rows(const T* __restrict addend, const T* __restrict x, const T* __restrict packed, T* __restrict out,
                      int64_t B, int64_t K, int64_t N, int64_t threads) {
  const int64_t blocks = column_blocks<T>(N);
  if (threads > 1 && blocks > 1) {
    at::parallel_for(0, blocks, (blocks + threads - 1) / threads, [=](int64_t j0, int64_t j1) {
      packed_gemm_blocks<T>(addend, x, packed, out, B, K, N, j0, j1);
    });
  } else {
    packed_gemm_blocks<T>(addend, x, packed, out, B, K, N, 0, blocks);
  }
}

// Runs rows(b0, b1) on each of the call's threads, the batch split between them. The rows of a batch never meet
// in an LSTM, so each thread can take its rows through every step with no barrier between steps and no value
// crossing cores (but a cache line at the boundary of two threads' rows, where a row's width is not a multiple of
// 64 bytes) (kLoopBatch). Split by columns per step (kLoop), a step waits on both threads twice (once where the
// pointwise pass is not threaded, below kParallelCells) and moves most of its values between the cores' caches:
// on the 2-vCPU VM, whose two vCPUs the host places now near each other and now far apart (a cache
// line's round trip 110 vs 400 ns), the forward at batch 20 x hidden 512 took 21.4 / 23.9 ms a layer (near /
// far) this way against 22.4 / 26.9 split by columns. Each thread then reads the whole weight every step, so
// with few rows a thread the columns split wins (batch 4: 5.9 vs 4.6 ms): fused_tuning measures both.
template <typename F>
void over_batch(int64_t B, const F& rows) {
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && B > 1) {
    at::parallel_for(0, B, (B + threads - 1) / threads, rows);
  } else {
    rows(0, B);
  }
}

// Whether `packed` is own_pack's layout of a [K, N] weight of `like`'s dtype.
bool own_packed_fits(const at::Tensor& packed, const at::Tensor& like, int64_t K, int64_t N) {
  if (packed.scalar_type() != like.scalar_type() || !packed.is_contiguous() || packed.dim() != 3) return false;
  const int64_t C = packed.size(2);
  return packed.size(0) == (N + C - 1) / C && packed.size(1) == K &&
         C == (like.scalar_type() == at::kFloat ? Block<float>::kCols : Block<double>::kCols);
}

// w [K, N] into column-block slabs [ceil(N / kCols), K, kCols], zero-padded: the layout packed_gemm_rows reads.
// Into `out` when given (a weight changed in place).
at::Tensor own_pack(at::Tensor w, std::optional<at::Tensor> out) {
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 2 && w.is_contiguous() &&
                  (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble),
              "own_pack: a contiguous 2-d float32/float64 CPU weight [K, N]");
  const int64_t K = w.size(0), N = w.size(1);
  int64_t C = 0;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "own_pack", [&] { C = Block<scalar_t>::kCols; });
  const int64_t blocks = (N + C - 1) / C;
  at::Tensor dest = out.has_value() ? *out : at::empty({blocks, K, C}, w.options());
  TORCH_CHECK(dest.sizes() == at::IntArrayRef({blocks, K, C}) && dest.is_contiguous() &&
                  dest.scalar_type() == w.scalar_type(),
              "own_pack: the packed buffer does not fit the weight");
  dest.zero_();
  for (int64_t j = 0; j < blocks; ++j) {
    const int64_t cols = std::min(C, N - j * C);
    dest[j].narrow(1, 0, cols).copy_(w.narrow(1, j * C, cols));
  }
  return dest;
}

at::Tensor packed_linear_add(const at::Tensor& x, const at::Tensor& addend, const at::Tensor& packed) {
  // mkldnn::_linear_pointwise.binary: x @ W^T + addend on a weight prepacked by
  // mkldnn::_reorder_linear_weight, the same call impls/fused.py makes from Python.
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, c10::string_view)>();
  return op.call(x, addend, packed, std::nullopt, "add");
}

// The CPU float32/float64 loop: raw pointers stepped by offsets, no tensor made per step (a
// tensor view costs about half a microsecond, as much as a whole step at hidden 15), except the
// two views the prepacked GEMM takes.
template <typename T>
void forward_loop_cpu(at::Tensor& gates, at::Tensor& h, at::Tensor& c, at::Tensor& tanh_c,
                      const std::optional<at::Tensor>& packed, at::Tensor& pre, int64_t gemm) {
  const int64_t steps = gates.size(0), B = gates.size(1), H = h.size(2), G = B * 4 * H, S = B * H;
  T* g = gates.mutable_data_ptr<T>();
  T* hp = h.mutable_data_ptr<T>();
  T* cp = c.mutable_data_ptr<T>();
  T* tc = tanh_c.mutable_data_ptr<T>();
  T* scratch = pre.mutable_data_ptr<T>();
  if (gemm == kLoopBatch) {
    const T* w = packed->const_data_ptr<T>();
    over_batch(B, [=](int64_t b0, int64_t b1) {
      for (int64_t t = 0; t < steps; ++t) {
        packed_gemm_blocks<T>(g + t * G + b0 * 4 * H, hp + t * S + b0 * H, w, scratch + b0 * 4 * H, b1 - b0, H, 4 * H,
                              0, column_blocks<T>(4 * H));
        for (int64_t b = b0; b < b1; ++b) {
          forward_row<T, false>(scratch + b * 4 * H, g + t * G + b * 4 * H, cp + t * S + b * H,
                                cp + (t + 1) * S + b * H, tc + t * S + b * H, hp + (t + 1) * S + b * H, H);
        }
      }
    });
    return;
  }
  for (int64_t t = 0; t < steps; ++t) {
    const T* p = scratch;
    at::Tensor packed_out;  // keeps the prepacked GEMM's result alive for the pointwise pass
    if constexpr (std::is_same_v<T, float>) {
      if (gemm == kMkl) {  // the product alone into the scratch; the pointwise pass adds the projection
        mkl_gemm(hp + t * S, packed->const_data_ptr<float>(), scratch, B, 4 * H, H, 0.0f);
        forward_cell<T, true>(scratch, g + t * G, cp + t * S, cp + (t + 1) * S, tc + t * S, hp + (t + 1) * S, B, H);
        continue;
      }
    }
    if (gemm == kPacked) {
      packed_out = packed_linear_add(h[t], gates[t], *packed);
      TORCH_CHECK(packed_out.is_contiguous(), "forward_steps: the prepacked GEMM's result is not contiguous");
      p = packed_out.const_data_ptr<T>();
    } else {
      packed_gemm_rows<T>(g + t * G, hp + t * S, packed->const_data_ptr<T>(), scratch, B, H, 4 * H,
                          at::get_num_threads());
    }
    forward_cell<T>(p, g + t * G, cp + t * S, cp + (t + 1) * S, tc + t * S, hp + (t + 1) * S, B, H);
  }
}

// Any device, any dtype: ATen's addmm and the same pointwise operations the Python loop calls.
void forward_loop_aten(at::Tensor& gates, at::Tensor& h, at::Tensor& c, at::Tensor& tanh_c, const at::Tensor& w_h,
                       const std::optional<at::Tensor>& packed, at::Tensor& pre, int64_t gemm) {
  const int64_t steps = gates.size(0), H = h.size(2);
  const bool fused_pointwise = hand_written_pointwise(gates);
  for (int64_t t = 0; t < steps; ++t) {
    at::Tensor step = gates[t];
    at::Tensor p = gemm == kPacked ? packed_linear_add(h[t], step, *packed) : at::addmm_out(pre, step, h[t], w_h.t());
    if (fused_pointwise) {
      AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "forward_cell", [&] {
        forward_cell<scalar_t>(p.contiguous().const_data_ptr<scalar_t>(), step.mutable_data_ptr<scalar_t>(),
                               c[t].const_data_ptr<scalar_t>(), c[t + 1].mutable_data_ptr<scalar_t>(),
                               tanh_c[t].mutable_data_ptr<scalar_t>(), h[t + 1].mutable_data_ptr<scalar_t>(),
                               gates.size(1), H);
      });
      continue;
    }
    at::Tensor c_next = c[t + 1], tc = tanh_c[t], h_next = h[t + 1];
    at::Tensor sig = step.narrow(1, 0, 3 * H), u = step.narrow(1, 3 * H, H);
    at::sigmoid_out(sig, p.narrow(1, 0, 3 * H));
    at::tanh_out(u, p.narrow(1, 3 * H, H));
    at::mul_out(c_next, step.narrow(1, 2 * H, H), c[t]);
    c_next.addcmul_(step.narrow(1, H, H), u);
    at::tanh_out(tc, c_next);
    at::mul_out(h_next, step.narrow(1, 0, H), tc);
  }
}

void forward_steps(at::Tensor gates, at::Tensor h, at::Tensor c, at::Tensor tanh_c, at::Tensor w_h,
                   std::optional<at::Tensor> packed, at::Tensor pre, int64_t gemm) {
  at::NoGradGuard no_grad;
  TORCH_CHECK(gates.is_contiguous() && h.is_contiguous() && c.is_contiguous() && tanh_c.is_contiguous() &&
                  pre.is_contiguous(),
              "forward_steps: buffers must be contiguous");
  TORCH_CHECK(gemm >= kAten && gemm <= kLoopBatch, "forward_steps: unknown GEMM mode ", gemm);
  const int64_t T = gates.size(0), B = gates.size(1), H = h.size(2);
  TORCH_CHECK(gates.dim() == 3 && gates.size(2) == 4 * H && h.sizes() == at::IntArrayRef({T + 1, B, H}) &&
                  c.sizes() == h.sizes() && tanh_c.sizes() == at::IntArrayRef({T, B, H}) &&
                  pre.numel() >= B * 4 * H && w_h.sizes() == at::IntArrayRef({4 * H, H}),
              "forward_steps: buffer shapes do not fit gates [T, B, 4H], h and c [T+1, B, H]");
  TORCH_CHECK((gemm != kPacked && gemm != kMkl) || packed.has_value(), "forward_steps: packed GEMM without a packed weight");
  TORCH_CHECK(gemm != kMkl || (gates.scalar_type() == at::kFloat && mkl_packed_available()),
              "forward_steps: MKL's packed GEMM is for float32, with MKL");
  const bool fused_pointwise = hand_written_pointwise(gates);
  TORCH_CHECK(!own_kernel(gemm) || fused_pointwise, "forward_steps: the loop GEMM is for CPU float32/float64");
  TORCH_CHECK(!own_kernel(gemm) || (packed.has_value() && own_packed_fits(*packed, gates, H, 4 * H)),
              "forward_steps: the loop's own product needs W_h^T [H, 4H] packed by own_pack");
  if (fused_pointwise && gemm != kAten) {
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "forward_loop_cpu", [&] {
      forward_loop_cpu<scalar_t>(gates, h, c, tanh_c, packed, pre, gemm);
    });
  } else {
    forward_loop_aten(gates, h, c, tanh_c, w_h, packed, pre, gemm);
  }
}

// ---- backward --------------------------------------------------------------------------------

// One step in reverse: from dh (dh_t, dy_t included) and dc (dc_t, updated in place to dc_{t-1})
// writes da [B, 4H] in canonical order i, f, g, o. Gate clipping as the Caffe LSTM's: da is clamped,
// dc carries on unclamped.
template <typename T>
void backward_row(const T* __restrict g, const T* __restrict c_prev, const T* __restrict tanh_c,
                  const T* __restrict dh, T* __restrict dc, T* __restrict d, int64_t H, bool clip, T theta) {
  for (int64_t j = 0; j < H; ++j) {
    const T o = g[j], i = g[H + j], f = g[2 * H + j], u = g[3 * H + j];
    const T tc = tanh_c[j], grad_h = dh[j];
    const T grad_c = dc[j] + grad_h * o * (T(1) - tc * tc);
    T d_i = grad_c * u * i * (T(1) - i);
    T d_f = grad_c * c_prev[j] * f * (T(1) - f);
    T d_g = grad_c * i * (T(1) - u * u);
    T d_o = grad_h * tc * o * (T(1) - o);
    if (clip) {
      d_i = d_i < -theta ? -theta : (d_i > theta ? theta : d_i);
      d_f = d_f < -theta ? -theta : (d_f > theta ? theta : d_f);
      d_g = d_g < -theta ? -theta : (d_g > theta ? theta : d_g);
      d_o = d_o < -theta ? -theta : (d_o > theta ? theta : d_o);
    }
    d[j] = d_i;
    d[H + j] = d_f;
    d[2 * H + j] = d_g;
    d[3 * H + j] = d_o;
    dc[j] = grad_c * f;
  }
}

template <typename T>
void backward_cell(const T* gates, const T* c_prev, const T* tanh_c, const T* dh, T* dc, T* da, int64_t B,
                   int64_t H, bool clip, T theta) {
  over_rows(B, H, [=](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      backward_row<T>(gates + b * 4 * H, c_prev + b * H, tanh_c + b * H, dh + b * H, dc + b * H, da + b * 4 * H, H,
                      clip, theta);
    }
  });
}

template <typename T>
void backward_loop_cpu(const at::Tensor& gates, const at::Tensor& c, const at::Tensor& tanh_c, at::Tensor& d_gates,
                       at::Tensor& dh, at::Tensor& dc, const at::Tensor& d_out,
                       const std::optional<at::Tensor>& packed, bool clip, T theta, int64_t gemm) {
  const int64_t steps = gates.size(0), B = gates.size(1), H = c.size(2), G = B * 4 * H, S = B * H;
  const T* g = gates.const_data_ptr<T>();
  const T* cp = c.const_data_ptr<T>();
  const T* tc = tanh_c.const_data_ptr<T>();
  const T* dout = d_out.const_data_ptr<T>();
  T* da = d_gates.mutable_data_ptr<T>();
  T* dcp = dc.mutable_data_ptr<T>();
  if (gemm == kLoopBatch) {
    // Each thread takes its rows (over_batch) through every step in reverse: the cell, then the product
    // dh_{t-1} = dA_t W_hh (+ dy_{t-1}) of its rows, in place in dh (the cell is done with those rows).
    T* dhp = dh.mutable_data_ptr<T>();
    const T* w = packed->const_data_ptr<T>();
    over_batch(B, [=](int64_t b0, int64_t b1) {
      for (int64_t t = steps - 1; t >= 0; --t) {
        for (int64_t b = b0; b < b1; ++b) {
          backward_row<T>(g + t * G + b * 4 * H, cp + t * S + b * H, tc + t * S + b * H, dhp + b * H, dcp + b * H,
                          da + t * G + b * 4 * H, H, clip, theta);
        }
        packed_gemm_blocks<T>(t > 0 ? dout + (t - 1) * S + b0 * H : nullptr, da + t * G + b0 * 4 * H, w,
                              dhp + b0 * H, b1 - b0, 4 * H, H, 0, column_blocks<T>(H));
      }
    });
    return;
  }
  at::Tensor zeros = gemm == kPacked ? at::zeros_like(dh) : at::Tensor();
  for (int64_t t = steps - 1; t >= 0; --t) {
    backward_cell<T>(g + t * G, cp + t * S, tc + t * S, dh.const_data_ptr<T>(), dcp, da + t * G, B, H, clip, theta);
    // dh_{t-1} = dA_t W_hh (+ dy_{t-1}): the one GEMM per step.
    if constexpr (std::is_same_v<T, float>) {
      if (gemm == kMkl) {
        float* out = dh.mutable_data_ptr<float>();
        if (t > 0) std::memcpy(out, dout + (t - 1) * S, sizeof(float) * S);
        mkl_gemm(da + t * G, packed->const_data_ptr<float>(), out, B, H, 4 * H, t > 0 ? 1.0f : 0.0f);
        continue;
      }
    }
    if (gemm == kPacked) {
      dh = packed_linear_add(d_gates[t], t > 0 ? d_out[t - 1] : zeros, *packed);
      TORCH_CHECK(dh.is_contiguous(), "backward_steps: the prepacked GEMM's result is not contiguous");
    } else {
      packed_gemm_rows<T>(t > 0 ? dout + (t - 1) * S : nullptr, da + t * G, packed->const_data_ptr<T>(),
                          dh.mutable_data_ptr<T>(), B, 4 * H, H, at::get_num_threads());
    }
  }
}

void backward_loop_aten(const at::Tensor& gates, const at::Tensor& c, const at::Tensor& tanh_c, at::Tensor& d_gates,
                        at::Tensor& dh, at::Tensor& dc, const at::Tensor& d_out, const at::Tensor& w_hh,
                        const std::optional<at::Tensor>& packed, std::optional<double> gate_clip, int64_t gemm) {
  const int64_t steps = gates.size(0), B = gates.size(1), H = c.size(2);
  const bool fused_pointwise = hand_written_pointwise(gates);
  at::Tensor zeros = gemm == kPacked ? at::zeros_like(dh) : at::Tensor();
  // Without the hand-written pass, what the Python loop does: everything that does not depend on
  // the recurrence computed for all steps at once, five operations per step.
  at::Tensor dh_factor, dc_factor, dc_dh;
  if (!fused_pointwise) {
    at::Tensor o = gates.narrow(2, 0, H), i = gates.narrow(2, H, H), u = gates.narrow(2, 3 * H, H);
    at::Tensor sig = gates.narrow(2, 0, 3 * H);
    at::Tensor d_sig = sig - sig * sig, d_tanh = 1 - u * u;
    dh_factor = tanh_c * d_sig.narrow(2, 0, H);
    dc_factor = at::stack({u * d_sig.narrow(2, H, H), c.narrow(0, 0, steps) * d_sig.narrow(2, 2 * H, H), i * d_tanh}, 2);
    dc_dh = (1 - tanh_c * tanh_c).mul_(o);
  }
  for (int64_t t = steps - 1; t >= 0; --t) {
    at::Tensor da = d_gates[t];
    if (fused_pointwise) {
      AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "backward_cell", [&] {
        backward_cell<scalar_t>(gates[t].const_data_ptr<scalar_t>(), c[t].const_data_ptr<scalar_t>(),
                                tanh_c[t].const_data_ptr<scalar_t>(), dh.const_data_ptr<scalar_t>(),
                                dc.mutable_data_ptr<scalar_t>(), da.mutable_data_ptr<scalar_t>(), B, H,
                                gate_clip.has_value(), static_cast<scalar_t>(gate_clip.value_or(0.0)));
      });
    } else {
      dc.addcmul_(dh, dc_dh[t]);
      at::Tensor da_ifg = da.narrow(1, 0, 3 * H).view({B, 3, H}), da_o = da.narrow(1, 3 * H, H);
      at::mul_out(da_ifg, dc_factor[t], dc.unsqueeze(1));
      at::mul_out(da_o, dh, dh_factor[t]);
      if (gate_clip.has_value()) da.clamp_(-*gate_clip, *gate_clip);
      dc.mul_(gates[t].narrow(1, 2 * H, H));
    }
    if (gemm == kPacked) {
      dh = packed_linear_add(da, t > 0 ? d_out[t - 1] : zeros, *packed);
    } else if (t > 0) {
      at::addmm_out(dh, d_out[t - 1], da, w_hh);
    } else {
      at::mm_out(dh, da, w_hh);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> backward_steps(at::Tensor gates, at::Tensor c, at::Tensor tanh_c,
                                                  at::Tensor d_gates, at::Tensor dh, at::Tensor dc, at::Tensor d_out,
                                                  at::Tensor w_hh, std::optional<at::Tensor> packed,
                                                  std::optional<double> gate_clip, int64_t gemm) {
  at::NoGradGuard no_grad;
  TORCH_CHECK(gates.is_contiguous() && c.is_contiguous() && tanh_c.is_contiguous() && d_gates.is_contiguous() &&
                  d_out.is_contiguous() && w_hh.is_contiguous(),
              "backward_steps: buffers must be contiguous");
  TORCH_CHECK(gemm >= kAten && gemm <= kLoopBatch, "backward_steps: unknown GEMM mode ", gemm);
  const int64_t T = gates.size(0), B = gates.size(1), H = c.size(2);
  TORCH_CHECK(gates.dim() == 3 && gates.size(2) == 4 * H && c.sizes() == at::IntArrayRef({T + 1, B, H}) &&
                  tanh_c.sizes() == at::IntArrayRef({T, B, H}) && d_gates.sizes() == gates.sizes() &&
                  d_out.sizes() == at::IntArrayRef({T, B, H}) && dh.numel() == B * H && dc.numel() == B * H &&
                  w_hh.sizes() == at::IntArrayRef({4 * H, H}),
              "backward_steps: buffer shapes do not fit gates [T, B, 4H], c [T+1, B, H], d_out [T, B, H]");
  TORCH_CHECK((gemm != kPacked && gemm != kMkl) || packed.has_value(), "backward_steps: packed GEMM without a packed weight");
  TORCH_CHECK(gemm != kMkl || (gates.scalar_type() == at::kFloat && mkl_packed_available()),
              "backward_steps: MKL's packed GEMM is for float32, with MKL");
  // dh_T and dc_T are working buffers, written in place (as the Python loop's are): impls/fused.py
  // passes fresh ones (dh_n + dy_T, a clone of dc_n), so copying them again here would be work
  // done twice inside the timed backward.
  TORCH_CHECK(dh.is_contiguous() && dc.is_contiguous(), "backward_steps: dh and dc must be contiguous");
  const bool fused_pointwise = hand_written_pointwise(gates);
  TORCH_CHECK(!own_kernel(gemm) || fused_pointwise, "backward_steps: the loop GEMM is for CPU float32/float64");
  TORCH_CHECK(!own_kernel(gemm) || (packed.has_value() && own_packed_fits(*packed, gates, 4 * H, H)),
              "backward_steps: the loop's own product needs W_hh [4H, H] packed by own_pack");
  if (fused_pointwise && gemm != kAten) {
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "backward_loop_cpu", [&] {
      backward_loop_cpu<scalar_t>(gates, c, tanh_c, d_gates, dh, dc, d_out, packed, gate_clip.has_value(),
                                  static_cast<scalar_t>(gate_clip.value_or(0.0)), gemm);
    });
  } else {
    backward_loop_aten(gates, c, tanh_c, d_gates, dh, dc, d_out, w_hh, packed, gate_clip, gemm);
  }
  return {dh, dc};
}

// w [rows, cols] float32 packed as the B operand of c [m, n] = a [m, k] @ B: B = w^T (transposed:
// n = rows, k = cols) or B = w (n = cols, k = rows). Into `out` when given (a weight changed in place).
at::Tensor mkl_pack(at::Tensor w, int64_t m, bool transposed, std::optional<at::Tensor> out) {
  TORCH_CHECK(mkl_packed_available(), "mkl_pack: this PyTorch has no MKL packed GEMM");
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kFloat && w.dim() == 2 && w.is_contiguous(),
              "mkl_pack: a contiguous 2-d float32 CPU weight");
  const int64_t rows = w.size(0), cols = w.size(1);
  const int64_t n = transposed ? rows : cols, k = transposed ? cols : rows;
  const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, static_cast<int>(m), static_cast<int>(n),
                                                 static_cast<int>(k));
  const int64_t floats = static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float));
  at::Tensor dest = out.has_value() ? *out : at::empty({floats}, w.options());
  TORCH_CHECK(dest.numel() >= floats && dest.is_contiguous(), "mkl_pack: the packed buffer is too small");
  cblas_sgemm_pack(kRowMajor, kBMatrix, transposed ? kTrans : kNoTrans, static_cast<int>(m), static_cast<int>(n),
                   static_cast<int>(k), 1.0f, w.const_data_ptr<float>(), static_cast<int>(cols),
                   dest.mutable_data_ptr<float>());
  return dest;
}

bool has_mkl_packed_gemm() { return mkl_packed_available(); }

// out = beta * out + a @ b on oneDNN's matmul (float32 CPU; a and b contiguous or transposed views; out contiguous).
void dnn_matmul(at::Tensor a, at::Tensor b, at::Tensor out, double beta) {
  TORCH_CHECK(at::native::mkldnn_matmul != nullptr, "dnn_matmul: this PyTorch does not export oneDNN's matmul");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2 && a.size(1) == b.size(0) && out.size(0) == a.size(0) &&
                  out.size(1) == b.size(1),
              "dnn_matmul: shapes do not fit out [m, n] = a [m, k] @ b [k, n]");
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && out.device().is_cpu() && a.layout() == at::kStrided &&
                  b.layout() == at::kStrided && out.layout() == at::kStrided,
              "dnn_matmul: dense CPU tensors only");
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "dnn_matmul: float32 operands and output");
  TORCH_CHECK(out.is_contiguous(), "dnn_matmul: the output must be contiguous");
  at::assert_no_overlap(out, a);
  at::assert_no_overlap(out, b);
  at::native::mkldnn_matmul(a, b, out, static_cast<float>(beta), 1.0f);
}

bool has_dnn_matmul() { return at::native::mkldnn_matmul != nullptr; }

// x [B, K] @ w [K, N] (+ addend [B, N]) by the loop's own kernel, w given as own_pack(w): for tests, and to
// time the kernel alone.
at::Tensor own_product(at::Tensor x, at::Tensor packed, int64_t n, std::optional<at::Tensor> addend, int64_t threads) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
                  own_packed_fits(packed, x, x.size(1), n),
              "own_product: a contiguous 2-d float32/float64 CPU x [B, K] and own_pack's layout of a [K, n] weight");
  TORCH_CHECK(!addend.has_value() || (addend->sizes() == at::IntArrayRef({x.size(0), n}) &&
                                      addend->is_contiguous() && addend->scalar_type() == x.scalar_type()),
              "own_product: the addend must be a contiguous [B, N] of x's dtype");
  at::Tensor out = at::empty({x.size(0), n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "own_product", [&] {
    packed_gemm_rows<scalar_t>(addend.has_value() ? addend->const_data_ptr<scalar_t>() : nullptr,
                               x.const_data_ptr<scalar_t>(), packed.const_data_ptr<scalar_t>(),
                               out.mutable_data_ptr<scalar_t>(), x.size(0), x.size(1), n, threads);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(lstm_harness_steps, m) {
  m.def("forward_steps", &forward_steps);
  m.def("backward_steps", &backward_steps);
  m.def("mkl_pack", &mkl_pack);
  m.def("has_mkl_packed_gemm", &has_mkl_packed_gemm);
  m.def("dnn_matmul", &dnn_matmul);
  m.def("has_dnn_matmul", &has_dnn_matmul);
  m.def("own_product", &own_product);
  m.def("own_pack", &own_pack);
}
