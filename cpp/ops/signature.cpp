// openmm_geom::signature_native: truncated path signatures, Chen's identity step by step.
//
//   signature_native(path[B,L,C], depth N, initial[B,D]?) -> signature[B,D]
//   D = C + C^2 + ... + C^N; level k (k = 1..N) flattened with index i1*C^(k-1) + ... + ik
//   (the layout of openmm_geom.ops.signature and pysiglib), no scalar term. With ``initial``
//   the result is initial ⊗ S(path) (Chen's identity: a stored signature extended by points).
//
// Forward, per path: S <- S ⊗ exp(d_j) for each increment d_j = x[j+1] - x[j], in place from
// the top level down, each level by Horner's scheme
//     S^m += (...((d/m + S^1) ⊗ d/(m-1) + S^2) ⊗ d/(m-2) ... + S^(m-1)) ⊗ d
// in one contiguous buffer; paths are spread over threads with at::parallel_for.
//
// Backward: a reverse sweep. The signature before step j is rebuilt from the one after it,
// S_j = S_(j+1) ⊗ exp(-d_j) (the inverse of a segment's exponential), so nothing is stored
// per step: memory is O(batch x D) at any length. The gradient is carried through each
// step's Horner scheme in reverse. Double backward is refused with a clear error (the
// pure-torch implementation, ``native=False``, supports it).
//
// Why native: the pure-torch recursion (a block cumulative sum and one BLAS product per
// level) was 1.1-3.4x pysiglib's forward time at batch 256 x 1,000 steps; a step here is a
// few hundred to a few thousand fused multiply-adds on data in L1 cache. The hot loops are
// compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and baseline x86-64 and picked
// at run time (GCC target_clones; plain "avx2" would leave out FMA).
#include <torch/script.h>
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

struct Levels {
    int64_t channels, depth, size;
    std::vector<int64_t> offset;  // offset[k]: start of level k (k = 1..depth); offset[depth + 1] = size
    std::vector<int64_t> width;   // width[k] = channels^k
    std::vector<double> reciprocal;  // reciprocal[k] = 1/k: no division in a step's loops
    Levels(int64_t c, int64_t n)
            : channels(c), depth(n), offset(n + 2, 0), width(n + 1, 1), reciprocal(n + 1, 0.0) {
        for (int64_t k = 1; k <= n; k++) {
            reciprocal[k] = 1.0 / double(k);
            width[k] = width[k - 1] * c;
            offset[k + 1] = offset[k] + width[k];
        }
        size = offset[n + 1];
    }
};

// Paths per thread chunk: a chunk should carry at least ~2^18 multiply-adds (roughly
// length x signature size per path), so that small calls do not pay for waking a second
// thread (tens of microseconds idle, a scheduler time slice on a loaded machine).
inline int64_t paths_per_chunk(int64_t work_per_path) {
    constexpr int64_t chunk_work = int64_t(1) << 18;
    return std::max<int64_t>(1, chunk_work / std::max<int64_t>(1, work_per_path));
}

// Inner loops. A row of C channels (C a power of two up to 16, known at compile time) is
// one GCC vector: each loop then works row by row with whole-row multiply-adds, which the
// compiler maps to AVX-512, AVX2 or SSE registers in the respective clone. (Left to itself,
// with C known, GCC vectorised across rows with shuffles and ran 3x slower.) Other channel
// counts run plain loops.
template <typename T, int CC>
struct Row {
    static constexpr bool vector = CC == 2 || CC == 4 || CC == 8 || CC == 16;
    // a row is P chunks of at most 32 bytes (one AVX2 register). GCC spills wider vectors
    // to the stack in every iteration: 64-byte chunks (one AVX-512 register) ran 4-10x
    // slower on an AVX2-only CPU (AMD Zen 3) through store-forwarding stalls.
    static constexpr int bytes = vector ? int(sizeof(T)) * CC : int(sizeof(T));
    static constexpr int width = bytes > 32 ? 32 : bytes;
    static constexpr int P = bytes / width;
    static constexpr int K = width / int(sizeof(T));  // elements per chunk
    typedef T type __attribute__((vector_size(width)));
    static inline __attribute__((always_inline)) type load(const T* p) {
        type r;
        std::memcpy(&r, p, sizeof(r));
        return r;
    }
    static inline __attribute__((always_inline)) void store(T* p, const type& r) { std::memcpy(p, &r, sizeof(r)); }
};

// out[i, :] (+)= (a[i] + s[i]) scale d[:]
template <typename T, int CC>
static inline __attribute__((always_inline)) void horner_product(
        T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ s, const T* __restrict__ d,
        T scale, int64_t len, int64_t C_runtime, bool accumulate) {
    using R = Row<T, CC>;
    if constexpr (R::vector) {
        typename R::type dv[R::P];
        for (int q = 0; q < R::P; q++) dv[q] = R::load(d + q * R::K);
        for (int64_t i = 0; i < len; i++) {
            const T v = (a[i] + s[i]) * scale;
            for (int q = 0; q < R::P; q++) {
                T* o = out + i * CC + q * R::K;
                typename R::type r = dv[q] * v;
                if (accumulate) r += R::load(o);
                R::store(o, r);
            }
        }
    } else {
        const int64_t C = CC > 0 ? CC : C_runtime;
        for (int64_t i = 0; i < len; i++) {
            const T v = (a[i] + s[i]) * scale;
            T* o = out + i * C;
            if (accumulate)
                for (int64_t c = 0; c < C; c++) o[c] += v * d[c];
            else
                for (int64_t c = 0; c < C; c++) o[c] = v * d[c];
        }
    }
}

// out[i, :] = (a[i] + s[i]) scale d[:] + add[i, :]   (the last Horner product of the top
// level's v_j, with S^(N-1) added in the same pass)
template <typename T, int CC>
static inline __attribute__((always_inline)) void horner_product_plus(
        T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ s, const T* __restrict__ d,
        const T* __restrict__ add, T scale, int64_t len, int64_t C_runtime) {
    using R = Row<T, CC>;
    if constexpr (R::vector) {
        typename R::type dv[R::P];
        for (int q = 0; q < R::P; q++) dv[q] = R::load(d + q * R::K);
        for (int64_t i = 0; i < len; i++) {
            const T v = (a[i] + s[i]) * scale;
            for (int q = 0; q < R::P; q++)
                R::store(out + i * CC + q * R::K, dv[q] * v + R::load(add + i * CC + q * R::K));
        }
    } else {
        const int64_t C = CC > 0 ? CC : C_runtime;
        for (int64_t i = 0; i < len; i++) {
            const T v = (a[i] + s[i]) * scale;
            for (int64_t c = 0; c < C; c++) out[i * C + c] = v * d[c] + add[i * C + c];
        }
    }
}

// next[i, :] = b[i] scale d[:] + s[i, :]   (B_(k+1) = B_k ⊗ d scale + S^(k+1))
template <typename T, int CC>
static inline __attribute__((always_inline)) void horner_partial(
        T* __restrict__ next, const T* __restrict__ b, const T* __restrict__ s, const T* __restrict__ d,
        T scale, int64_t len, int64_t C_runtime) {
    using R = Row<T, CC>;
    if constexpr (R::vector) {
        typename R::type dv[R::P];
        for (int q = 0; q < R::P; q++) dv[q] = R::load(d + q * R::K);
        for (int64_t i = 0; i < len; i++) {
            const T v = b[i] * scale;
            for (int q = 0; q < R::P; q++)
                R::store(next + i * CC + q * R::K, dv[q] * v + R::load(s + i * CC + q * R::K));
        }
    } else {
        const int64_t C = CC > 0 ? CC : C_runtime;
        for (int64_t i = 0; i < len; i++) {
            const T v = b[i] * scale;
            for (int64_t c = 0; c < C; c++) next[i * C + c] = v * d[c] + s[i * C + c];
        }
    }
}

// Reverse of A_(k+1) = B_k ⊗ d scale: lower[i] = (upper[i, :] . d) scale, acc[:] += sum_i
// upper[i, :] b[i]
template <typename T, int CC>
static inline __attribute__((always_inline)) void horner_reverse(
        T* __restrict__ lower, T* __restrict__ acc, const T* __restrict__ upper, const T* __restrict__ b,
        const T* __restrict__ d, T scale, int64_t len, int64_t C_runtime) {
    using R = Row<T, CC>;
    if constexpr (R::vector) {
        typename R::type dv[R::P], total[R::P];
        for (int q = 0; q < R::P; q++) {
            dv[q] = R::load(d + q * R::K);
            total[q] = R::load(acc + q * R::K);
        }
        for (int64_t i = 0; i < len; i++) {
            typename R::type p = {};
            const T bi = b[i];
            for (int q = 0; q < R::P; q++) {
                const typename R::type r = R::load(upper + i * CC + q * R::K);
                p += r * dv[q];
                total[q] += r * bi;
            }
            T sum = 0;
            for (int c = 0; c < R::K; c++) sum += p[c];
            lower[i] = sum * scale;
        }
        for (int q = 0; q < R::P; q++) R::store(acc + q * R::K, total[q]);
    } else {
        const int64_t C = CC > 0 ? CC : C_runtime;
        for (int64_t i = 0; i < len; i++) {
            const T* row = upper + i * C;
            const T bi = b[i];
            T sum = 0;
            for (int64_t c = 0; c < C; c++) {
                sum += row[c] * d[c];
                acc[c] += row[c] * bi;
            }
            lower[i] = sum * scale;
        }
    }
}

// S <- S ⊗ exp(d) for levels 1..highest (the levels above are left as they are): from the
// top down, each by Horner's scheme (scratch a, b hold channels^(depth-1) numbers each).
template <typename T, int CC>
static inline __attribute__((always_inline)) void chen_step(T* S, const T* d, const Levels& L, T* a, T* b,
                                                            int64_t highest) {
    const int64_t C = CC > 0 ? CC : L.channels;
    for (int64_t m = highest; m >= 1; m--) {
        T* top = S + L.offset[m];
        if (m == 1) {
            for (int64_t c = 0; c < C; c++) top[c] += d[c];
            continue;
        }
        const T inverse_m = T(L.reciprocal[m]);
        for (int64_t c = 0; c < C; c++) a[c] = d[c] * inverse_m;
        int64_t len = C;
        for (int64_t k = 1; k < m; k++) {
            const T* s = S + L.offset[k];
            const T scale = T(L.reciprocal[m - k]);
            if (k == m - 1) {  // the last product lands on level m itself
                horner_product<T, CC>(top, a, s, d, scale, len, C, true);
            } else {
                horner_product<T, CC>(b, a, s, d, scale, len, C, false);
                std::swap(a, b);
                len *= C;
            }
        }
    }
}

// Gradient through S_next = S ⊗ exp(d), given S (before the step) and G = dL/dS_next:
// writes dL/dS into Gp (overwritten) and adds dL/dd into dd. Scratch: B (size L.size, the
// Horner partial sums B_k at level k's offset), dA and dB (channels^(depth-1) each), acc (C).
template <typename T, int CC>
static inline __attribute__((always_inline)) void chen_step_backward(
        const T* S, const T* d, const T* G, T* Gp, T* dd, const Levels& L, T* B, T* dA, T* dB, T* acc) {
    const int64_t C = CC > 0 ? CC : L.channels;
    std::copy(G, G + L.size, Gp);  // the identity part: S^m passes straight through
    for (int64_t m = L.depth; m >= 1; m--) {
        const T* g = G + L.offset[m];
        if (m == 1) {
            for (int64_t c = 0; c < C; c++) dd[c] += g[c];
            continue;
        }
        // recompute the Horner partial sums B_k = A_k + S^k, A_1 = d/m, A_(k+1) = B_k ⊗ d/(m-k)
        const T inverse_m = T(L.reciprocal[m]);
        T* b1 = B + L.offset[1];
        const T* s1 = S + L.offset[1];
        for (int64_t c = 0; c < C; c++) b1[c] = d[c] * inverse_m + s1[c];
        for (int64_t k = 1; k + 1 < m; k++) {
            const T scale = T(L.reciprocal[m - k]);
            horner_partial<T, CC>(B + L.offset[k + 1], B + L.offset[k], S + L.offset[k + 1], d, scale,
                                  L.width[k], C);
        }
        // reverse: dA_m = g; for k = m-1..1: A_(k+1) = B_k ⊗ d scale
        const T* upper = g;  // dA_(k+1), width C^(k+1)
        for (int64_t k = m - 1; k >= 1; k--) {
            const T scale = T(L.reciprocal[m - k]);
            const T* bk = B + L.offset[k];
            T* lower = (upper == dA) ? dB : dA;  // dB_k, width C^k
            for (int64_t c = 0; c < C; c++) acc[c] = 0;
            horner_reverse<T, CC>(lower, acc, upper, bk, d, scale, L.width[k], C);
            for (int64_t c = 0; c < C; c++) dd[c] += acc[c] * scale;
            T* gk = Gp + L.offset[k];
            for (int64_t i = 0; i < L.width[k]; i++) gk[i] += lower[i];
            upper = lower;
        }
        for (int64_t c = 0; c < C; c++) dd[c] += upper[c] * inverse_m;  // A_1 = d/m
    }
}

// One path's forward sweep. The hot loops are cloned per instruction set (see the header).
#define SIGNATURE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

// Steps whose top-level products are summed at once (see forward_path).
constexpr int64_t TOP_BLOCK = 32;

// The top level N is never read by a later step, only added to: its increment at step j is
// v_j ⊗ d_j with v_j = (Horner partial sum of level N-1) + S^(N-1)_j, so a block of steps
// adds V^T D (V: J x C^(N-1), D: J x C), a small matrix product that keeps each output row in
// registers across the block instead of streaming the whole top level through memory at
// every step.
template <typename T, int CC>
static inline __attribute__((always_inline)) void add_top_block(T* __restrict__ top, const T* __restrict__ V,
                                                                const T* __restrict__ D, int64_t rows,
                                                                int64_t steps, int64_t C_runtime) {
    using R = Row<T, CC>;
    if constexpr (R::vector) {
        // rows in groups (independent multiply-add chains share each D row) of at most 8
        // accumulator registers
        constexpr int G = R::P >= 4 ? 2 : 4;
        int64_t i = 0;
        for (; i + G <= rows; i += G) {
            typename R::type o[G][R::P];
            for (int g = 0; g < G; g++)
                for (int q = 0; q < R::P; q++) o[g][q] = R::load(top + (i + g) * CC + q * R::K);
            for (int64_t j = 0; j < steps; j++) {
                const T* v = V + j * rows + i;
                for (int q = 0; q < R::P; q++) {
                    const typename R::type dq = R::load(D + j * CC + q * R::K);
                    for (int g = 0; g < G; g++) o[g][q] += dq * v[g];
                }
            }
            for (int g = 0; g < G; g++)
                for (int q = 0; q < R::P; q++) R::store(top + (i + g) * CC + q * R::K, o[g][q]);
        }
        for (; i < rows; i++) {
            typename R::type o[R::P];
            for (int q = 0; q < R::P; q++) o[q] = R::load(top + i * CC + q * R::K);
            for (int64_t j = 0; j < steps; j++)
                for (int q = 0; q < R::P; q++) o[q] += R::load(D + j * CC + q * R::K) * V[j * rows + i];
            for (int q = 0; q < R::P; q++) R::store(top + i * CC + q * R::K, o[q]);
        }
    } else {
        const int64_t C = CC > 0 ? CC : C_runtime;
        for (int64_t i = 0; i < rows; i++) {
            T* o = top + i * C;
            for (int64_t j = 0; j < steps; j++) {
                const T vj = V[j * rows + i];
                const T* dj = D + j * C;
                for (int64_t c = 0; c < C; c++) o[c] += vj * dj[c];
            }
        }
    }
}

// Depth 2 in one pass: with m_j = S^1 + x_j - x_0 + d_j/2 (the running level 1 at the
// segment's midpoint), level 2 gains m_j ⊗ d_j at step j and level 1 gains d_j. The C x C
// accumulator stays in registers (rows in groups of at most 8 vector registers; a group
// takes one pass over the path, which is in cache after the first), and the finiteness check
// rides along (x - x is 0 for finite x, NaN otherwise). Returns false for a non-finite path.
template <typename T, int CC>
static inline __attribute__((always_inline)) bool depth2_path(const T* x, int64_t length, T* S) {
    using R = Row<T, CC>;
    typedef typename R::type V;
    constexpr int G = (8 / R::P) < CC ? (8 / R::P) : CC;  // rows per pass (8 accumulators)
    T* top = S + CC;
    V base[R::P], check[R::P];
    alignas(64) T m[CC];
    for (int q = 0; q < R::P; q++) {
        check[q] = R::load(x + q * R::K) - R::load(x + q * R::K);
        base[q] = R::load(S + q * R::K) - R::load(x + q * R::K);  // S^1 - x_0
    }
    for (int r0 = 0; r0 < CC; r0 += G) {
        V o[G][R::P];
        for (int g = 0; g < G; g++)
            for (int q = 0; q < R::P; q++) o[g][q] = R::load(top + (r0 + g) * CC + q * R::K);
        for (int64_t j = 0; j + 1 < length; j++) {
            V d[R::P];
            for (int q = 0; q < R::P; q++) {
                const V a = R::load(x + j * CC + q * R::K), b = R::load(x + (j + 1) * CC + q * R::K);
                d[q] = b - a;
                R::store(m + q * R::K, base[q] + (a + b) * T(0.5));
                if (r0 == 0) check[q] += b - b;
            }
            for (int g = 0; g < G; g++) {
                const T mg = m[r0 + g];
                for (int q = 0; q < R::P; q++) o[g][q] += d[q] * mg;
            }
        }
        for (int g = 0; g < G; g++)
            for (int q = 0; q < R::P; q++) R::store(top + (r0 + g) * CC + q * R::K, o[g][q]);
    }
    bool finite = true;
    for (int q = 0; q < R::P; q++)
        for (int c = 0; c < R::K; c++) finite &= check[q][c] == T(0);
    if (finite)
        for (int c = 0; c < CC; c++) S[c] += x[(length - 1) * CC + c] - x[c];
    return finite;
}

template <typename T, int CC>
static inline __attribute__((always_inline)) void forward_path(const T* x, int64_t length, const Levels& L,
                                                               T* S, T* scratch, bool* finite) {
    if constexpr (Row<T, CC>::vector) {
        if (L.depth == 2) {
            *finite = depth2_path<T, CC>(x, length, S);
            return;
        }
    }
    // a path's values are checked as they come into cache for its sweep
    bool ok = true;
    for (int64_t i = 0; i < length * L.channels; i++) ok &= std::isfinite(x[i]);
    *finite = ok;
    if (!ok) return;
    const int64_t C = CC > 0 ? CC : L.channels, N = L.depth, rows = L.width[N - 1];
    T* a = scratch;
    T* b = a + L.width[N - 1];
    T* V = b + L.width[N - 1];  // TOP_BLOCK x rows
    T* D = V + rows * TOP_BLOCK;  // TOP_BLOCK x C
    int64_t filled = 0;
    for (int64_t j = 0; j + 1 < length; j++) {
        T* d = D + filled * C;
        for (int64_t c = 0; c < C; c++) d[c] = x[(j + 1) * C + c] - x[j * C + c];
        if (N == 1) {
            for (int64_t c = 0; c < C; c++) S[c] += d[c];
            continue;
        }
        // v_j for the top level, from the levels below as they are before this step
        const T inverse_n = T(L.reciprocal[N]);
        for (int64_t c = 0; c < C; c++) a[c] = d[c] * inverse_n;
        int64_t len = C;
        T* v = V + filled * rows;
        const T* s = S + L.offset[N - 1];
        if (N == 2) {
            for (int64_t i = 0; i < rows; i++) v[i] = a[i] + s[i];
        }
        for (int64_t k = 1; k + 1 < N; k++) {
            if (k + 2 == N) {  // the last product: S^(N-1) added as it is written
                horner_product_plus<T, CC>(v, a, S + L.offset[k], d, s, T(L.reciprocal[N - k]),
                                           len, C);
                break;
            }
            horner_product<T, CC>(b, a, S + L.offset[k], d, T(L.reciprocal[N - k]), len, C, false);
            std::swap(a, b);
            len *= C;
        }
        chen_step<T, CC>(S, d, L, a, b, N - 1);
        if (++filled == TOP_BLOCK) {
            add_top_block<T, CC>(S + L.offset[N], V, D, rows, filled, C);
            filled = 0;
        }
    }
    if (filled > 0)
        add_top_block<T, CC>(S + L.offset[N], V, D, rows, filled, C);
}

template <typename T, int CC>
static inline __attribute__((always_inline)) void backward_path(const T* x, int64_t length, const Levels& L,
                                                                T* S, T* G, T* grad_x, T* scratch) {
    const int64_t C = CC > 0 ? CC : L.channels, W = L.width[L.depth - 1];
    T* d = scratch;
    T* minus = d + C;
    T* dd = minus + C;
    T* acc = dd + C;
    T* a = acc + C;
    T* b = a + W;
    T* Gp = b + W;
    T* B = Gp + L.size;
    for (int64_t j = length - 2; j >= 0; j--) {
        for (int64_t c = 0; c < C; c++) {
            d[c] = x[(j + 1) * C + c] - x[j * C + c];
            minus[c] = -d[c];
            dd[c] = 0;
        }
        // S_j from S_(j+1); the top level is never read, so it is not rebuilt
        chen_step<T, CC>(S, minus, L, a, b, L.depth - 1);
        chen_step_backward<T, CC>(S, d, G, Gp, dd, L, B, a, b, acc);
        std::swap(G, Gp);
        for (int64_t c = 0; c < C; c++) {
            grad_x[(j + 1) * C + c] += dd[c];
            grad_x[j * C + c] -= dd[c];
        }
    }
    if (length >= 2 && (length - 1) % 2 == 1) {
        // an odd number of swaps left the result in the caller's Gp buffer: copy it back
        std::copy(G, G + L.size, Gp);
    }
}

// Channel counts compiled with the count as a constant (inner loops fully unrolled); others
// run the same code with the count read at run time.
#define SIGNATURE_DISPATCH_CHANNELS(FUNCTION, T, ...)            \
    switch (L.channels) {                                          \
        case 2: FUNCTION<T, 2>(__VA_ARGS__); break;               \
        case 3: FUNCTION<T, 3>(__VA_ARGS__); break;               \
        case 4: FUNCTION<T, 4>(__VA_ARGS__); break;               \
        case 8: FUNCTION<T, 8>(__VA_ARGS__); break;               \
        case 16: FUNCTION<T, 16>(__VA_ARGS__); break;             \
        default: FUNCTION<T, 0>(__VA_ARGS__);                     \
    }

SIGNATURE_CLONES void forward_path_f64(const double* x, int64_t n, const Levels& L, double* S, double* s,
                                       bool* finite) {
    SIGNATURE_DISPATCH_CHANNELS(forward_path, double, x, n, L, S, s, finite)
}
SIGNATURE_CLONES void forward_path_f32(const float* x, int64_t n, const Levels& L, float* S, float* s,
                                       bool* finite) {
    SIGNATURE_DISPATCH_CHANNELS(forward_path, float, x, n, L, S, s, finite)
}
SIGNATURE_CLONES void backward_path_f64(const double* x, int64_t n, const Levels& L, double* S, double* G,
                                        double* gx, double* s) {
    SIGNATURE_DISPATCH_CHANNELS(backward_path, double, x, n, L, S, G, gx, s)
}
SIGNATURE_CLONES void backward_path_f32(const float* x, int64_t n, const Levels& L, float* S, float* G,
                                        float* gx, float* s) {
    SIGNATURE_DISPATCH_CHANNELS(backward_path, float, x, n, L, S, G, gx, s)
}

inline bool forward_path_any(const double* x, int64_t n, const Levels& L, double* S, double* s) {
    bool finite = true;
    forward_path_f64(x, n, L, S, s, &finite);
    return finite;
}
inline bool forward_path_any(const float* x, int64_t n, const Levels& L, float* S, float* s) {
    bool finite = true;
    forward_path_f32(x, n, L, S, s, &finite);
    return finite;
}
inline void backward_path_any(const double* x, int64_t n, const Levels& L, double* S, double* G, double* gx,
                              double* s) {
    backward_path_f64(x, n, L, S, G, gx, s);
}
inline void backward_path_any(const float* x, int64_t n, const Levels& L, float* S, float* G, float* gx,
                              float* s) {
    backward_path_f32(x, n, L, S, G, gx, s);
}

void check_inputs(const Tensor& path, int64_t depth, const Tensor& initial) {
    TORCH_CHECK(path.dim() == 3, "signature_native: path must be (batch, length, channels), got ",
                path.sizes());
    TORCH_CHECK(path.scalar_type() == torch::kFloat64 || path.scalar_type() == torch::kFloat32,
                "signature_native: path must be float32 or float64");
    TORCH_CHECK(path.device().is_cpu(), "signature_native: CPU tensors only");
    TORCH_CHECK(depth >= 1, "signature_native: depth must be >= 1, got ", depth);
    TORCH_CHECK(path.size(1) >= 1 && path.size(2) >= 1, "signature_native: empty path ", path.sizes());
    if (initial.numel() > 0) {
        const Levels L(path.size(2), depth);
        TORCH_CHECK(initial.dim() == 2 && initial.size(0) == path.size(0) && initial.size(1) == L.size,
                    "signature_native: initial must be (batch, ", L.size, "), got ", initial.sizes());
        TORCH_CHECK(initial.scalar_type() == path.scalar_type(),
                    "signature_native: initial and path must have the same dtype");
    }
}

class Signature : public torch::autograd::Function<Signature> {
public:
    static Tensor forward(AutogradContext* ctx, const Tensor& path, int64_t depth, const Tensor& initial) {
        check_inputs(path, depth, initial);
        const Tensor x = path.detach().contiguous();
        const int64_t batch = x.size(0), length = x.size(1), C = x.size(2);
        const Levels L(C, depth);
        const bool has_initial = initial.numel() > 0;
        Tensor out = has_initial ? initial.detach().contiguous().clone() : torch::zeros({batch, L.size}, x.options());
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "signature_native", [&] {
            const scalar_t* xp = x.data_ptr<scalar_t>();
            scalar_t* op = out.data_ptr<scalar_t>();
            const int64_t scratch = 2 * L.width[depth - 1] + L.width[depth - 1] * TOP_BLOCK + TOP_BLOCK * C;
            std::atomic<bool> finite(true);
            at::parallel_for(0, batch, paths_per_chunk(length * L.size), [&](int64_t begin, int64_t end) {
                std::vector<scalar_t> work(scratch);
                for (int64_t p = begin; p < end; p++)
                    if (!forward_path_any(xp + p * length * C, length, L, op + p * L.size, work.data()))
                        finite = false;
            });
            TORCH_CHECK_VALUE(finite, "path contains NaN or infinite values");
        });
        ctx->saved_data["depth"] = depth;
        ctx->saved_data["has_initial"] = has_initial;
        ctx->save_for_backward({x, out});
        return out;
    }

    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        TORCH_CHECK(!torch::GradMode::is_enabled(),
                    "signature_native: double backward (create_graph=True) is not supported by the "
                    "native kernel; compute the signature with native=False for higher derivatives");
        auto saved = ctx->get_saved_variables();
        const Tensor &x = saved[0], &out = saved[1];
        const int64_t depth = ctx->saved_data["depth"].toInt();
        const bool has_initial = ctx->saved_data["has_initial"].toBool();
        const int64_t batch = x.size(0), length = x.size(1), C = x.size(2);
        const Levels L(C, depth);
        Tensor grad_x = torch::zeros_like(x);
        Tensor G = grads[0].defined() ? grads[0].to(x.scalar_type()).contiguous().clone()
                                      : torch::zeros_like(out);
        Tensor S = out.clone();  // rebuilt backwards, step by step, down to the initial signature
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "signature_native_backward", [&] {
            const scalar_t* xp = x.data_ptr<scalar_t>();
            scalar_t* sp = S.data_ptr<scalar_t>();
            scalar_t* gp = G.data_ptr<scalar_t>();
            scalar_t* gxp = grad_x.data_ptr<scalar_t>();
            const int64_t scratch = 4 * C + 2 * L.width[depth - 1] + 2 * L.size;
            at::parallel_for(0, batch, paths_per_chunk(length * L.size), [&](int64_t begin, int64_t end) {
                std::vector<scalar_t> work(scratch);
                for (int64_t p = begin; p < end; p++) {
                    scalar_t* g = gp + p * L.size;
                    backward_path_any(xp + p * length * C, length, L, sp + p * L.size, g,
                                      gxp + p * length * C, work.data());
                }
            });
        });
        // G now holds dL/d(initial) (the gradient carried to the start of the path)
        return {grad_x, Tensor(), has_initial ? G : Tensor()};
    }
};

Tensor signature_native(const Tensor& path, int64_t depth, const c10::optional<Tensor>& initial) {
    // autograd::Function inputs must be defined tensors: "no initial" travels as an empty one.
    return Signature::apply(path, depth, initial.has_value() ? *initial : torch::empty({0}, path.options()));
}

// Flat indices (within level ``length``) of the Lyndon words over ``channels`` letters, in
// lexicographic order: words strictly smaller than each of their proper rotations. Computed
// once per (channels, length) and kept for the process (log-signatures project on them at
// every call).
Tensor lyndon_words(int64_t channels, int64_t length) {
    TORCH_CHECK(channels >= 1 && length >= 1, "lyndon_words: channels and length must be >= 1");
    static std::mutex lock;
    static std::map<std::pair<int64_t, int64_t>, Tensor> cache;
    std::lock_guard<std::mutex> guard(lock);
    auto found = cache.find({channels, length});
    if (found != cache.end()) return found->second;
    const Levels L(channels, length);
    const int64_t size = L.width[length];
    std::vector<int64_t> words;
    for (int64_t w = 0; w < size; w++) {
        bool lyndon = true;
        for (int64_t r = 1; r < length && lyndon; r++) {
            const int64_t high = L.width[length - r];
            const int64_t rotated = (w % high) * L.width[r] + w / high;
            lyndon = w < rotated;
        }
        if (lyndon) words.push_back(w);
    }
    Tensor result = torch::tensor(words, torch::kInt64);
    cache.emplace(std::make_pair(channels, length), result);
    return result;
}


// ---- log map: signature -> log-signature in Lyndon-word coordinates ----------------------
//
//   signature_log_native(signature[B,D], channels C, depth N) -> logsignature[B,M]
//
// log(1 + X) = sum_{n=1..N} c_n X^n with c_n = (-1)^(n+1)/n, by Horner's scheme
//     B(N) = c_N,   B(n) = c_n + X ⊗ B(n+1)  (n = N-1..1; B(n) needs levels 0..N-n),
//     log = X ⊗ B(1).
// Only the Lyndon-word entries of log are wanted, and each is a short sum
//     log_k[w] = sum_{i=1..k} X_i[w / C^(k-i)] B(1)_(k-i)[w % C^(k-i)]   (B(1)_0 = 1),
// so the top level is never formed: the cost is that of B(1) up to level N-1, O(N C^(N-1))
// per path, instead of N-1 full truncated products (O(N^2 C^N)) in torch. The backward pass
// recomputes the B(n) of a path and carries the gradient through the same sums in reverse.

// Horner intermediates of one path: B(n) for n = 1..N, each with levels 0..N-n, stored in
// `B` at n * stride (level 0 at index 0, level k >= 1 at 1 + offset[k]).
struct LogPlan {
    Levels L;
    int64_t stride;                          // 1 + offset[N]: levels 0..N-1 with a scalar term
    std::vector<std::vector<int64_t>> words; // words[k]: Lyndon words of length k (flat indices)
    int64_t size;                            // number of Lyndon words up to length N
    LogPlan(int64_t c, int64_t n) : L(c, n), stride(1 + L.offset[n]), words(n + 1), size(0) {
        for (int64_t k = 1; k <= n; k++) {
            const Tensor w = lyndon_words(c, k);
            const int64_t* wp = w.data_ptr<int64_t>();
            words[k].assign(wp, wp + w.numel());
            size += w.numel();
        }
    }
    static double coefficient(int64_t n) { return (n % 2 == 1 ? 1.0 : -1.0) / double(n); }
};

template <typename T>
inline const T* level_of(const T* B, const Levels& L, int64_t k) { return k == 0 ? B : B + 1 + L.offset[k]; }
template <typename T>
inline T* level_of(T* B, const Levels& L, int64_t k) { return k == 0 ? B : B + 1 + L.offset[k]; }

// B(n) for n = N..1 from the signature levels X (flat, no scalar term).
template <typename T>
void log_horner(const T* X, const LogPlan& P, T* B) {
    const Levels& L = P.L;
    const int64_t N = L.depth;
    std::fill(B, B + (N + 1) * P.stride, T(0));
    B[N * P.stride] = T(LogPlan::coefficient(N));
    for (int64_t n = N - 1; n >= 1; n--) {
        T* out = B + n * P.stride;
        const T* inner = B + (n + 1) * P.stride;
        out[0] = T(LogPlan::coefficient(n));
        for (int64_t k = 1; k <= N - n; k++) {
            T* o = level_of(out, L, k);
            for (int64_t i = 1; i <= k; i++) {
                const int64_t j = k - i, wj = L.width[j];
                const T* x = X + L.offset[i];
                const T* b = level_of(inner, L, j);
                for (int64_t u = 0; u < L.width[i]; u++) {
                    const T xu = x[u];
                    T* row = o + u * wj;
                    for (int64_t v = 0; v < wj; v++) row[v] += xu * b[v];
                }
            }
        }
    }
}

template <typename T>
void log_forward_path(const T* X, const LogPlan& P, T* B, T* out) {
    const Levels& L = P.L;
    log_horner(X, P, B);
    const T* B1 = B + P.stride;
    for (int64_t k = 1; k <= L.depth; k++) {
        for (int64_t w : P.words[k]) {
            T total = 0;
            for (int64_t i = 1; i <= k; i++) {
                const int64_t j = k - i;
                total += X[L.offset[i] + w / L.width[j]] * level_of(B1, L, j)[w % L.width[j]];
            }
            *out++ = total;
        }
    }
}

// gX (+)= d(sum g * log)/dX for one path; gB is scratch of the size of B.
template <typename T>
void log_backward_path(const T* X, const T* g, const LogPlan& P, T* B, T* gB, T* gX) {
    const Levels& L = P.L;
    const int64_t N = L.depth;
    log_horner(X, P, B);
    std::fill(gB, gB + (N + 1) * P.stride, T(0));
    T* gB1 = gB + P.stride;
    const T* B1 = B + P.stride;
    for (int64_t k = 1; k <= N; k++) {
        for (int64_t w : P.words[k]) {
            const T gw = *g++;
            for (int64_t i = 1; i <= k; i++) {
                const int64_t j = k - i, u = w / L.width[j], v = w % L.width[j];
                gX[L.offset[i] + u] += gw * level_of(B1, L, j)[v];
                if (j > 0) level_of(gB1, L, j)[v] += gw * X[L.offset[i] + u];
            }
        }
    }
    // B(n) = c_n + X ⊗ B(n+1): from B(1) inwards
    for (int64_t n = 1; n <= N - 1; n++) {
        const T* gout = gB + n * P.stride;
        const T* inner = B + (n + 1) * P.stride;
        T* ginner = gB + (n + 1) * P.stride;
        for (int64_t k = 1; k <= N - n; k++) {
            const T* go = level_of(gout, L, k);
            for (int64_t i = 1; i <= k; i++) {
                const int64_t j = k - i, wj = L.width[j];
                const T* x = X + L.offset[i];
                T* gx = gX + L.offset[i];
                const T* b = level_of(inner, L, j);
                T* gb = level_of(ginner, L, j);
                for (int64_t u = 0; u < L.width[i]; u++) {
                    const T* row = go + u * wj;
                    T acc = 0;
                    for (int64_t v = 0; v < wj; v++) acc += row[v] * b[v];
                    gx[u] += acc;
                    if (j > 0) {
                        const T xu = x[u];
                        for (int64_t v = 0; v < wj; v++) gb[v] += xu * row[v];
                    }
                }
            }
        }
    }
}

void check_log_inputs(const Tensor& signature, int64_t channels, int64_t depth) {
    TORCH_CHECK(channels >= 1 && depth >= 1, "signature_log_native: channels and depth must be >= 1");
    TORCH_CHECK(signature.scalar_type() == torch::kFloat64 || signature.scalar_type() == torch::kFloat32,
                "signature_log_native: signature must be float32 or float64");
    TORCH_CHECK(signature.device().is_cpu(), "signature_log_native: CPU tensors only");
    const Levels L(channels, depth);
    TORCH_CHECK(signature.dim() == 2 && signature.size(1) == L.size,
                "signature_log_native: signature must be (batch, ", L.size, ") for ", channels,
                " channels at depth ", depth, ", got ", signature.sizes());
}

class LogSignature : public torch::autograd::Function<LogSignature> {
public:
    static Tensor forward(AutogradContext* ctx, const Tensor& signature, int64_t channels, int64_t depth) {
        check_log_inputs(signature, channels, depth);
        const Tensor X = signature.detach().contiguous();
        const LogPlan P(channels, depth);
        const int64_t batch = X.size(0);
        Tensor out = torch::empty({batch, P.size}, X.options());
        AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "signature_log_native", [&] {
            const scalar_t* xp = X.data_ptr<scalar_t>();
            scalar_t* op = out.data_ptr<scalar_t>();
            at::parallel_for(0, batch, paths_per_chunk(P.stride * depth + P.size * depth), [&](int64_t begin, int64_t end) {
                std::vector<scalar_t> B((depth + 1) * P.stride);
                for (int64_t p = begin; p < end; p++)
                    log_forward_path(xp + p * P.L.size, P, B.data(), op + p * P.size);
            });
        });
        ctx->saved_data["channels"] = channels;
        ctx->saved_data["depth"] = depth;
        ctx->save_for_backward({X});
        return out;
    }

    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        TORCH_CHECK(!torch::GradMode::is_enabled(),
                    "signature_log_native: double backward (create_graph=True) is not supported by the "
                    "native kernel; compute the log-signature with native=False for higher derivatives");
        const Tensor X = ctx->get_saved_variables()[0];
        const int64_t channels = ctx->saved_data["channels"].toInt(), depth = ctx->saved_data["depth"].toInt();
        const LogPlan P(channels, depth);
        const int64_t batch = X.size(0);
        Tensor grad = torch::zeros_like(X);
        if (!grads[0].defined()) return {grad, Tensor(), Tensor()};
        const Tensor g = grads[0].to(X.scalar_type()).contiguous();
        AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "signature_log_native_backward", [&] {
            const scalar_t* xp = X.data_ptr<scalar_t>();
            const scalar_t* gp = g.data_ptr<scalar_t>();
            scalar_t* grad_p = grad.data_ptr<scalar_t>();
            at::parallel_for(0, batch, paths_per_chunk(P.stride * depth + P.size * depth), [&](int64_t begin, int64_t end) {
                std::vector<scalar_t> B((depth + 1) * P.stride), gB((depth + 1) * P.stride);
                for (int64_t p = begin; p < end; p++)
                    log_backward_path(xp + p * P.L.size, gp + p * P.size, P, B.data(), gB.data(),
                                      grad_p + p * P.L.size);
            });
        });
        return {grad, Tensor(), Tensor()};
    }
};

Tensor signature_log_native(const Tensor& signature, int64_t channels, int64_t depth) {
    return LogSignature::apply(signature, channels, depth);
}

} // namespace

TORCH_LIBRARY_FRAGMENT(openmm_geom, m) {
    m.def("signature_native(Tensor path, int depth, Tensor? initial=None) -> Tensor", signature_native);
    m.def("lyndon_words(int channels, int length) -> Tensor", lyndon_words);
    m.def("signature_log_native(Tensor signature, int channels, int depth) -> Tensor", signature_log_native);
}
