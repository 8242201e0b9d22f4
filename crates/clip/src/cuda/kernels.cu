// The CUDA encoder's own kernels, compiled at run time by NVRTC (no toolkit at build time).
//
// Everything that is not a matrix product: patch gathering, embeddings, layer norm, the
// qkv split into heads, softmax, the head merge, bias + activation. Matrix products go to
// cuBLAS. Residuals, layer norms, softmax and bias sums run in f32, as under
// torch.autocast; `T` is the operand type of the matrix products (f32, bf16 or f16), held
// as its bits. No CUDA header is included, so NVRTC needs no include path.

typedef unsigned short bits16;

struct F32 {
    typedef float t;
    static __device__ __forceinline__ float load(float x) { return x; }
    static __device__ __forceinline__ float store(float x) { return x; }
};

struct BF16 {
    typedef bits16 t;
    static __device__ __forceinline__ float load(bits16 x) {
        return __uint_as_float(((unsigned int)x) << 16);
    }
    static __device__ __forceinline__ bits16 store(float x) {
        bits16 r;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
        return r;
    }
};

struct F16 {
    typedef bits16 t;
    static __device__ __forceinline__ float load(bits16 x) {
        float r;
        asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(x));
        return r;
    }
    static __device__ __forceinline__ bits16 store(float x) {
        bits16 r;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
        return r;
    }
};

// Sum over a block of `blockDim.x` threads (a multiple of 32, at most 1024); every thread
// gets the total.
__device__ __forceinline__ float block_sum(float v, float* shared) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += shared[w];
    return total;
}

// Elementwise kernels run on a 2-D grid: y over rows, x over columns, so that no thread
// divides 64-bit indices (slow on GPUs); both loops stride, so any grid covers any size.
#define FOR_ROWS(rows) for (int row = blockIdx.y; row < (rows); row += gridDim.y)
#define FOR_COLS(cols) \
    for (int col = blockIdx.x * blockDim.x + threadIdx.x; col < (cols); col += gridDim.x * blockDim.x)

// Flattened patches: row (image, gy, gx), column (channel, ky, kx), as the patch
// convolution's weight is laid out. Pixels past the last whole patch are ignored.
template <typename T>
__device__ void patches(const float* pixels, typename T::t* out, int n, int channels, int size,
                        int patch, int grid) {
    const int cols = channels * patch * patch;
    FOR_ROWS(n * grid * grid) {
        const int image = row / (grid * grid), cell = row % (grid * grid);
        const int gy = cell / grid, gx = cell % grid;
        FOR_COLS(cols) {
            const int c = col / (patch * patch), ky = (col / patch) % patch, kx = col % patch;
            const long long at = (((long long)image * channels + c) * size + gy * patch + ky) * size +
                                 gx * patch + kx;
            out[(long long)row * cols + col] = T::store(pixels[at]);
        }
    }
}

// x (n · tokens, hidden): row 0 of each image is the class embedding, row 1 + p the product
// of patch p; the position embedding is added to all.
extern "C" __global__ void assemble_embeddings(float* x, const float* patch_rows,
                                               const float* class_embedding,
                                               const float* position, int n, int tokens,
                                               int hidden) {
    FOR_ROWS(n * tokens) {
        const int image = row / tokens, t = row % tokens;
        const float* src = t == 0 ? class_embedding
                                  : patch_rows + ((long long)image * (tokens - 1) + t - 1) * hidden;
        FOR_COLS(hidden) {
            x[(long long)row * hidden + col] = src[col] + position[(long long)t * hidden + col];
        }
    }
}

// One block per row: optionally x += add_bias first (written back: the residual stream takes
// the bias the previous product left out), then out = LayerNorm(x) · weight + bias.
// out may be x itself (f32).
template <typename T>
__device__ void layer_norm(float* x, long long ldx, typename T::t* out, long long ldo,
                           const float* weight, const float* bias, const float* add_bias,
                           int cols, float eps) {
    __shared__ float shared[32];
    float* row = x + blockIdx.x * ldx;
    float sum = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = row[c];
        if (add_bias) {
            v += add_bias[c];
            row[c] = v;
        }
        sum += v;
    }
    const float mean = block_sum(sum, shared) / cols;
    float squares = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = row[c] - mean;
        squares += d * d;
    }
    const float rstd = rsqrtf(block_sum(squares, shared) / cols + eps);
    typename T::t* o = out + blockIdx.x * ldo;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        o[c] = T::store((row[c] - mean) * rstd * weight[c] + bias[c]);
    }
}

// qkv (n · s, 3 · hidden) f32 sums + bias → q, k, v each (n · heads, s, head_dim) of T.
template <typename T>
__device__ void split_heads(const float* qkv, const float* bias, typename T::t* q, int n, int s,
                            int heads, int head_dim) {
    const int hidden = heads * head_dim;
    const long long per = (long long)n * s * hidden;
    FOR_ROWS(n * s) {
        const int image = row / s, t = row % s;
        FOR_COLS(3 * hidden) {
            const int which = col / hidden, h = (col % hidden) / head_dim, d = col % head_dim;
            const long long at =
                which * per + (((long long)image * heads + h) * s + t) * head_dim + d;
            q[at] = T::store(qkv[(long long)row * 3 * hidden + col] + bias[col]);
        }
    }
}

// One warp per row of `cols` scores, rows `ld` apart: p = softmax(scores), in f32, stored
// as T at the same places.
template <typename T>
__device__ void softmax(const float* scores, typename T::t* p, long long rows, int cols, int ld) {
    const long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* x = scores + row * ld;
    float m = -__int_as_float(0x7f800000);
    for (int c = lane; c < cols; c += 32) m = fmaxf(m, x[c]);
    for (int offset = 16; offset > 0; offset >>= 1)
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    float sum = 0.0f;
    for (int c = lane; c < cols; c += 32) sum += expf(x[c] - m);
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    const float inv = 1.0f / sum;
    typename T::t* o = p + row * ld;
    for (int c = lane; c < cols; c += 32) o[c] = T::store(expf(x[c] - m) * inv);
}

// (n · heads, s, head_dim) → (n · s, heads · head_dim).
template <typename T>
__device__ void merge_heads(const typename T::t* o, typename T::t* out, int n, int s, int heads,
                            int head_dim) {
    const int hidden = heads * head_dim;
    FOR_ROWS(n * s) {
        const int image = row / s, t = row % s;
        FOR_COLS(hidden) {
            const int h = col / head_dim, d = col % head_dim;
            out[(long long)row * hidden + col] =
                o[(((long long)image * heads + h) * s + t) * head_dim + d];
        }
    }
}

// out = act(h + bias), act: 0 quick_gelu, 1 gelu (erf), 2 gelu (tanh).
template <typename T>
__device__ void bias_activation(const float* h, const float* bias, typename T::t* out, int rows,
                                int cols, int act) {
    FOR_ROWS(rows) {
        FOR_COLS(cols) {
            const long long e = (long long)row * cols + col;
            const float x = h[e] + bias[col];
            float y;
            if (act == 0) {
                y = x / (1.0f + expf(-1.702f * x));
            } else if (act == 1) {
                y = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
            } else {
                const float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
                y = 0.5f * x * (1.0f + tanhf(inner));
            }
            out[e] = T::store(y);
        }
    }
}

#define AESTHETE_KERNELS(T, suffix)                                                             \
    extern "C" __global__ void patches_##suffix(const float* pixels, T::t* out, int n,           \
                                                int channels, int size, int patch, int grid) {   \
        patches<T>(pixels, out, n, channels, size, patch, grid);                                 \
    }                                                                                            \
    extern "C" __global__ void layer_norm_##suffix(float* x, long long ldx, T::t* out,           \
                                                   long long ldo, const float* weight,           \
                                                   const float* bias, const float* add_bias,     \
                                                   int cols, float eps) {                        \
        layer_norm<T>(x, ldx, out, ldo, weight, bias, add_bias, cols, eps);                      \
    }                                                                                            \
    extern "C" __global__ void split_heads_##suffix(const float* qkv, const float* bias,         \
                                                    T::t* q, int n, int s, int heads,            \
                                                    int head_dim) {                              \
        split_heads<T>(qkv, bias, q, n, s, heads, head_dim);                                     \
    }                                                                                            \
    extern "C" __global__ void softmax_##suffix(const float* scores, T::t* p, long long rows,    \
                                                int cols, int ld) {                              \
        softmax<T>(scores, p, rows, cols, ld);                                                   \
    }                                                                                            \
    extern "C" __global__ void merge_heads_##suffix(const T::t* o, T::t* out, int n, int s,      \
                                                    int heads, int head_dim) {                   \
        merge_heads<T>(o, out, n, s, heads, head_dim);                                           \
    }                                                                                            \
    extern "C" __global__ void bias_activation_##suffix(const float* h, const float* bias,       \
                                                        T::t* out, int rows, int cols,           \
                                                        int act) {                               \
        bias_activation<T>(h, bias, out, rows, cols, act);                                       \
    }

AESTHETE_KERNELS(F32, f32)
AESTHETE_KERNELS(BF16, bf16)
AESTHETE_KERNELS(F16, f16)
