/* Native float32 CPU kernels for GAAF: phi(x) + g(x) s(x) and its derivative, one pass each.
 *
 * Built at first use by lightning_gaaf/activations/backends/native.py with the machine's C compiler
 * (-O3 -march=native -fopenmp) and called through ctypes. Every loop is written so that the
 * compiler vectorises it: no calls, no branches, only selects, and exp/tanh as the same inlined
 * polynomials as the compiled torch kernels (activations/f32math.py; a few float32 ulp).
 *
 * Kernels are specialised per (base, shape) pair by macros; parameters (negative slope, alpha,
 * hardtanh bounds, shape c / a / b, K, 1/K) arrive at run time in a float[8]. Threads come from
 * OpenMP: the process already has torch's libgomp loaded, so the kernels share torch's pool.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define GAAF_ABI_VERSION 2
/* Elements per thread below which a kernel stays on the calling thread: a quarter of ATen's
 * GRAIN_SIZE, as these loops cost several times more per element than a plain activation. */
#define GAAF_GRAIN 8192

/* Explicit multiply-add: the file is compiled with -ffp-contract=off so that the sawtooth
 * (x*K - floor(x*K)) is never contracted into an fma, which could push |g| above 0.5/K. */
#ifdef __FP_FAST_FMAF
#define MADD(a, b, c) fmaf((a), (b), (c))
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

typedef struct {
    float b0, b1;     /* base parameters: leaky slope | elu alpha | hardtanh (min, max) */
    float s0, s1;     /* shape parameters: gauss (-1/c) | shifted sigmoid (a, b) */
    float k, inv_k;   /* K and 1/K rounded down */
} params_t;

static inline float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* exp(a) for a <= 0 (NaN stays NaN) as 2^n (1 + expm1(r)): n = round(a / ln 2) by the 1.5 * 2^23
 * shifter (whose low bits then hold n), Cody-Waite reduction, and the degree-7 polynomial of
 * f32math.py for expm1(r), |r| <= ln(2)/2, evaluated Estrin-style (short dependency chains:
 * these loops are latency-bound). */
static inline void exp_parts(float a, float *two_n, float *expm1_r, int *under) {
    const float shifter = 12582912.0f;
    *under = a < -87.33f;
    float ac = *under ? -87.33f : a;
    float kf = MADD(ac, 1.4426950408889634f, shifter);
    float n = kf - shifter;
    float r = MADD(n, 2.12194440e-4f, MADD(n, -0.693359375f, ac));
    float r2 = r * r;
    float lo = MADD(r, 1.6666665459e-1f, 5.0000001201e-1f);
    float mid = MADD(r, 8.3334519073e-3f, 4.1665795894e-2f);
    float hi = MADD(r, 1.9875691500e-4f, 1.3981999507e-3f);
    float p = MADD(r2, MADD(r2, hi, mid), lo);
    *expm1_r = MADD(r2, p, r);
    uint32_t kbits;
    memcpy(&kbits, &kf, sizeof kbits);
    *two_n = bits_to_float((kbits << 23) + (127u << 23)); /* the shifter's own bits shift out */
}

static inline float exp_nonpos(float a) {
    float t, e;
    int under;
    exp_parts(a, &t, &e, &under);
    return under ? 0.0f : MADD(t, e, t);
}

static inline float expm1_nonpos(float a) {
    float t, e;
    int under;
    exp_parts(a, &t, &e, &under);
    return under ? -1.0f : MADD(t, e, t - 1.0f);  /* exact t - 1: no cancellation near 0 */
}

/* tanh as x P(x^2) / Q(x^2) on [-c, c] (Eigen's float tanh); +-inf -> +-1, NaN -> NaN. */
static inline float tanh_f32(float x) {
    const float c = 7.90531110763549805f;
    float xc = x < -c ? -c : (x > c ? c : x);
    float x2 = xc * xc, x4 = x2 * x2;
    /* P(x2) of degree 6 and Q(x2) of degree 3, Estrin-style for short dependency chains. */
    float p01 = MADD(x2, 6.37261928875436e-04f, 4.89352455891786e-03f);
    float p23 = MADD(x2, 5.12229709037114e-08f, 1.48572235717979e-05f);
    float p45 = MADD(x2, 2.00018790482477e-13f, -8.60467152213735e-11f);
    float p = MADD(x4, MADD(x4, MADD(x4, -2.76076847742355e-16f, p45), p23), p01);
    float q = MADD(x4, MADD(x2, 1.19825839466702e-06f, 1.18534705686654e-04f),
                   MADD(x2, 2.26843463243900e-03f, 4.89352518554385e-03f));
    float t = xc * p / q;
    t = fabsf(x) >= c ? copysignf(1.0f, x) : t; /* exactly +-1 in saturation; NaN stays NaN */
    return fabsf(x) < 0.0004f ? x : t;
}

/* sigmoid(z) and sigmoid'(z) from one e = exp(-|z|): no overflow, no cancellation. */
static inline void sigmoid_parts(float z, float *s, float *ds) {
    float e = exp_nonpos(-fabsf(z));
    float r = 1.0f / (1.0f + e);
    *s = z >= 0.0f ? r : e * r;
    *ds = e * r * r;
}

/* g(x) * f with the sawtooth g(x) = (xK - floor(xK) - 0.5)/K. Where xK is not finite (inf, NaN,
 * overflow) the tooth is undefined and the product is dropped: +-inf gives what phi gives (f may
 * be inf * 0 there), and NaN still comes out of phi and s. */
static inline float times_sawtooth(float x, float f, const params_t *p) {
    float xk = x * p->k;
    float g = (xk - floorf(xk) - 0.5f) * p->inv_k;
    return fabsf(xk) < INFINITY ? g * f : 0.0f;
}

/* ---- base activations: phi(x) and phi'(x) ---------------------------------------------- */

static inline float phi_tanh(float x, const params_t *p) { (void)p; return tanh_f32(x); }
static inline float dphi_tanh(float x, const params_t *p) {
    (void)p;
    float t = tanh_f32(x);
    return 1.0f - t * t;
}

static inline float phi_sigmoid(float x, const params_t *p) {
    (void)p;
    float s, ds;
    sigmoid_parts(x, &s, &ds);
    return s;
}
static inline float dphi_sigmoid(float x, const params_t *p) {
    (void)p;
    float s, ds;
    sigmoid_parts(x, &s, &ds);
    return ds;
}

static inline float phi_silu(float x, const params_t *p) {
    (void)p;
    float s, ds;
    sigmoid_parts(x, &s, &ds);
    return x * s;
}
static inline float dphi_silu(float x, const params_t *p) {
    (void)p;
    float s, ds;
    sigmoid_parts(x, &s, &ds);
    return s + x * ds;
}

/* Comparisons are false for NaN, so NaN passes through every select below unchanged. */
static inline float phi_relu(float x, const params_t *p) { (void)p; return x < 0.0f ? 0.0f : x; }
static inline float dphi_relu(float x, const params_t *p) { (void)p; return x > 0.0f ? 1.0f : 0.0f; }

static inline float phi_leaky_relu(float x, const params_t *p) { return x > 0.0f ? x : x * p->b0; }
static inline float dphi_leaky_relu(float x, const params_t *p) { return x > 0.0f ? 1.0f : p->b0; }

static inline float phi_elu(float x, const params_t *p) {
    float neg = p->b0 * expm1_nonpos(x > 0.0f ? 0.0f : x);
    return x > 0.0f ? x : neg;
}
static inline float dphi_elu(float x, const params_t *p) {
    float neg = p->b0 * exp_nonpos(x > 0.0f ? 0.0f : x);
    return x > 0.0f ? 1.0f : neg;
}

static inline float phi_hardtanh(float x, const params_t *p) {
    return x < p->b0 ? p->b0 : (x > p->b1 ? p->b1 : x);
}
static inline float dphi_hardtanh(float x, const params_t *p) {
    return (x > p->b0 && x < p->b1) ? 1.0f : 0.0f;
}

/* ---- shapes: s(x) and s'(x) --------------------------------------------------------------- */

static inline void shape_gauss(float x, const params_t *p, float *s, float *ds) {
    *s = exp_nonpos(x * x * p->s0);
    *ds = (2.0f * p->s0) * x * *s;
}

static inline void shape_shifted_sigmoid(float x, const params_t *p, float *s, float *ds) {
    float sd;
    sigmoid_parts((x + p->s1) * p->s0, s, &sd);
    *ds = p->s0 * sd;
}

static inline void shape_one(float x, const params_t *p, float *s, float *ds) {
    (void)x;
    (void)p;
    *s = 1.0f;
    *ds = 0.0f;
}

/* ---- loops ----------------------------------------------------------------------------------- */

typedef void (*forward_fn)(const float *, float *, int64_t, int64_t, const params_t *);
typedef void (*backward_fn)(const float *, const float *, float *, int64_t, int64_t, const params_t *);

#define GAAF_LOOPS(B, S)                                                                        \
    static void forward_##B##_##S(const float *restrict x, float *restrict y, int64_t lo,        \
                                  int64_t hi, const params_t *pp) {                              \
        const params_t p = *pp;                                                                  \
        for (int64_t i = lo; i < hi; ++i) {                                                      \
            float v = x[i], s, ds;                                                               \
            shape_##S(v, &p, &s, &ds);                                                           \
            y[i] = phi_##B(v, &p) + times_sawtooth(v, s, &p);                                     \
        }                                                                                        \
    }                                                                                            \
    static void backward_##B##_##S(const float *restrict x, const float *restrict go,            \
                                   float *restrict gi, int64_t lo, int64_t hi,                   \
                                   const params_t *pp) {                                         \
        const params_t p = *pp;                                                                  \
        for (int64_t i = lo; i < hi; ++i) {                                                      \
            float v = x[i], s, ds;                                                               \
            shape_##S(v, &p, &s, &ds);                                                           \
            gi[i] = go[i] * (dphi_##B(v, &p) + s + times_sawtooth(v, ds, &p));                   \
        }                                                                                        \
    }

#define GAAF_BASE(B) GAAF_LOOPS(B, gauss) GAAF_LOOPS(B, shifted_sigmoid) GAAF_LOOPS(B, one)

GAAF_BASE(tanh)
GAAF_BASE(sigmoid)
GAAF_BASE(relu)
GAAF_BASE(leaky_relu)
GAAF_BASE(elu)
GAAF_BASE(silu)
GAAF_BASE(hardtanh)

/* Rows = the `kernel` ids of the activation catalogue (activations/catalog.py), columns = the
 * `kernel` ids of the shapes (activations/shapes.py). relu6 uses the hardtanh row. */
#define GAAF_ROW(B, K) {K##_##B##_gauss, K##_##B##_shifted_sigmoid, K##_##B##_one}
#define GAAF_TABLE(K)                                                                            \
    {GAAF_ROW(tanh, K), GAAF_ROW(sigmoid, K), GAAF_ROW(relu, K), GAAF_ROW(leaky_relu, K),        \
     GAAF_ROW(elu, K), GAAF_ROW(silu, K), GAAF_ROW(hardtanh, K)}
#define N_BASES 7
#define N_SHAPES 3

static const forward_fn FORWARD[N_BASES][N_SHAPES] = GAAF_TABLE(forward);
static const backward_fn BACKWARD[N_BASES][N_SHAPES] = GAAF_TABLE(backward);

/* Split [0, n) into one chunk per thread (multiples of 64 elements, so chunks start on cache
 * lines); small tensors stay on the calling thread. */
#define GAAF_PARALLEL(n, nthreads, CALL)                                                         \
    do {                                                                                         \
        int64_t want = (n) / GAAF_GRAIN;                                                         \
        int nt = (nthreads) < want ? (nthreads) : (int)want;                                     \
        if (nt <= 1) {                                                                           \
            int64_t lo = 0, hi = (n);                                                            \
            CALL;                                                                                \
        } else {                                                                                 \
            int64_t chunk = (((n) + nt - 1) / nt + 63) & ~(int64_t)63;                           \
            _Pragma("omp parallel for num_threads(nt) schedule(static, 1)")                      \
            for (int t = 0; t < nt; ++t) {                                                       \
                int64_t lo = t * chunk, hi = lo + chunk < (n) ? lo + chunk : (n);                \
                if (lo < hi) CALL;                                                               \
            }                                                                                    \
        }                                                                                        \
    } while (0)

static int valid(int base, int shape) {
    return base >= 0 && base < N_BASES && shape >= 0 && shape < N_SHAPES;
}

static params_t unpack(const float *params) {
    params_t p = {params[0], params[1], params[2], params[3], params[4], params[5]};
    return p;
}

int gaaf_abi_version(void) { return GAAF_ABI_VERSION; }
int gaaf_table_rows(void) { return N_BASES; }
int gaaf_table_columns(void) { return N_SHAPES; }

int gaaf_forward(int base, int shape, const float *params, const float *x, float *y, int64_t n,
                 int nthreads) {
    if (!valid(base, shape)) return -1;
    forward_fn f = FORWARD[base][shape];
    params_t p = unpack(params);
    GAAF_PARALLEL(n, nthreads, f(x, y, lo, hi, &p));
    return 0;
}

int gaaf_backward(int base, int shape, const float *params, const float *x, const float *grad_out,
                  float *grad_in, int64_t n, int nthreads) {
    if (!valid(base, shape)) return -1;
    backward_fn f = BACKWARD[base][shape];
    params_t p = unpack(params);
    GAAF_PARALLEL(n, nthreads, f(x, grad_out, grad_in, lo, hi, &p));
    return 0;
}
