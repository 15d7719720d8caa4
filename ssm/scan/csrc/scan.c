/* ssmscope's compiled CPU selective scan (loaded by ssm/scan/compiled.py through ctypes).
 *
 * Built on first use with the system's C compiler:
 *     cc -O3 -march=native -fopenmp -fno-math-errno -fno-trapping-math -ffp-contract=fast -std=gnu11
 *        -shared -fPIC
 * (or, where the compiler has no OpenMP, -fopenmp-simd and one thread). No -ffast-math: the inner
 * loops vectorise through `#pragma omp simd` (which allows the reassociation of their sums), and
 * the exponential is our own (expq_* below), so no libm call sits in a hot loop and NaN/Inf keep
 * IEEE semantics (the worker's divergence detection needs them); -fno-trapping-math lets gcc turn
 * the exp's clamps into selects. Threads: see parallel_for.
 *
 * Entry points (fp32 and fp64): ssm_scan_fwd_{f32,f64}, ssm_scan_bwd_{f32,f64},
 * ssm_roofline_{f32,f64}, and the SSD (Mamba-2) probe sums ssd_probe_fwd_{f32,f64}, ssd_probe_bwd_{f32,f64}
 * (ssd_probe_kernel.h); each returns 0, 1 for bad arguments, 2 when out of memory.
 * ssm_scan_lanes() is the channel-block width, which sets the checkpoint layout.
 */

#define _POSIX_C_SOURCE 200809L
#define _ISOC11_SOURCE

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define SCAN_ABI_VERSION 4
#ifndef LANES /* channels per task and SIMD loop (scan_kernel.h): one 512-bit vector of float where there is one */
#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif
#endif
#define MODE_TILE 64 /* state modes whose states and coefficients stay in L1 while t advances */
#define SCAN_MAX_REFS 4
#define SCAN_MAX_THREADS 256

/* Argument blocks (mirrored by ctypes.Structure in compiled.py: all fields 8 bytes wide). */
typedef struct {
    int64_t batch, L, E, N, chunk, zoh, nthreads, nref;
    const void *u, *delta, *A, *B, *C;
    void *y;      /* (B, L, E): Σ_n C x */
    void *ckpt;   /* (ceil(E/LANES), B, ceil(L/chunk) − 1, N, LANES) chunk-start states, or NULL */
    void *states; /* (B, L, E, N), or NULL */
    void *ssq;    /* (B, L, E): Σ_n x², or NULL */
    void *mx;     /* (B, L, E): max_n |x|, or NULL */
    int64_t ref_zoh[SCAN_MAX_REFS];
    const void *ref_u[SCAN_MAX_REFS], *ref_delta[SCAN_MAX_REFS], *ref_A[SCAN_MAX_REFS], *ref_B[SCAN_MAX_REFS];
    void *ref_ssq[SCAN_MAX_REFS], *ref_mx[SCAN_MAX_REFS]; /* (B, L, E): Σ_n (x − x_ref)², max_n |x − x_ref| */
} scan_fwd_args;

typedef struct {
    int64_t batch, L, E, N, chunk, zoh, nthreads, reserved;
    const void *u, *delta, *A, *B, *C, *gy, *ckpt;
    void *gu, *gdelta; /* (B, L, E) */
    void *gA;          /* (E, N) */
    void *gB, *gC;     /* (B, L, N) */
    void *gssq;        /* (B, L, E): Σ_n g², or NULL */
} scan_bwd_args;

typedef struct { /* SSD probe sums (ssd_probe_kernel.h); shapes as ssm/scan/ssd.py, all contiguous */
    int64_t batch, L, H, P, G, N, nthreads, nref;
    const void *x, *delta, *A, *B; /* (B, L, H, P), (B, L, H), (H), (B, L, G, N) */
    void *ssq, *mx;                /* (B, L, H·P): Σ_n h², max_n |h| */
    const void *ref_x[SCAN_MAX_REFS], *ref_delta[SCAN_MAX_REFS], *ref_A[SCAN_MAX_REFS], *ref_B[SCAN_MAX_REFS];
    void *ref_ssq[SCAN_MAX_REFS], *ref_mx[SCAN_MAX_REFS]; /* (B, L, H·P): Σ_n (h − h_ref)², max_n |h − h_ref| */
} ssd_probe_fwd_args;

typedef struct {
    int64_t batch, L, H, P, G, N, nthreads, reserved;
    const void *gy, *delta, *A, *C; /* ∂L/∂y (B, L, H, P), (B, L, H), (H), (B, L, G, N) */
    void *gssq, *gmx;               /* (B, L, H·P): Σ_n λ², max_n |λ| */
} ssd_probe_bwd_args;

int ssm_scan_abi_version(void) { return SCAN_ABI_VERSION; }
int ssm_scan_lanes(void) { return LANES; }

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static int clamp_threads(int64_t n) {
    return n < 1 ? 1 : (n > SCAN_MAX_THREADS ? SCAN_MAX_THREADS : (int)n);
}

/* ---------------------------------------------------------------- threads
 * Tasks 0..ntasks−1, dynamically scheduled over nthreads OpenMP threads (tid = the thread's number).
 * Built with -fopenmp the library binds to the libgomp.so.1 that torch has already loaded (same
 * soname), so its threads are torch's own intra-op pool: no second pool spinning on the same cores.
 * Built without OpenMP (the fallback build) it runs on the calling thread. */

typedef void (*task_fn)(void *ctx, int64_t task, int tid);

static void parallel_for(task_fn fn, void *ctx, int64_t ntasks, int nthreads) {
#ifdef _OPENMP
    if (nthreads > 1 && ntasks > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
        for (int64_t i = 0; i < ntasks; i++) fn(ctx, i, omp_get_thread_num());
        return;
    }
#else
    (void)nthreads;
#endif
    for (int64_t i = 0; i < ntasks; i++) fn(ctx, i, 0);
}

/* ---------------------------------------------------------------- exp
 * x = k ln2 + r with k = round(x / ln2), |r| <= ln2/2 (Cody–Waite, two-part ln2); then
 *     s = 2^k (built in the exponent bits),  q = expm1(r) (Taylor polynomial, degree 7 for
 *     float: truncation 1.3e-8 relative; degree 13 for double: 1e-17),
 * so exp(x) = s + s q and expm1(x) = (s − 1) + s q, both to about an ulp (expm1 included as
 * x → 0, where k = 0, s = 1 and the result is q itself: no cancellation, which ZOH's
 * κ = expm1(ΔA)/A needs as ΔA → 0). Below the smallest normal result (x < −87 / −708) s is 0,
 * so exp is 0 and expm1 is −1; above the largest (x > 88 / 709) both are +Inf. A NaN x gives NaN
 * (the clamps are written as comparisons, which keep a NaN). Integer k is read off the bits of
 * x/ln2 + 1.5·2^23 (or 2^52), which vectorises on AVX2 without a float→int64 conversion. */

static inline float f32_from_bits(int32_t i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
static inline int32_t f32_bits(float f) {
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i;
}
static inline double f64_from_bits(int64_t i) {
    double f;
    memcpy(&f, &i, sizeof f);
    return f;
}
static inline int64_t f64_bits(double f) {
    int64_t i;
    memcpy(&i, &f, sizeof i);
    return i;
}

static inline void expq_f32(float x, float *s, float *q) {
    const float shift = 0x1.8p23f;
    float xc = x < -87.0f ? -87.0f : x;
    xc = xc > 88.0f ? 88.0f : xc;
    const float kf = xc * 1.44269504088896341f + shift;
    const float k = kf - shift;
    const int32_t ki = f32_bits(kf) - f32_bits(shift);
    float r = xc - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    float sc = f32_from_bits((ki + 127) << 23);
    sc = x < -87.0f ? 0.0f : sc;
    sc = x > 88.0f ? __builtin_inff() : sc;
    *s = sc;
    *q = x > 88.0f ? 1.0f : p * r; /* overflow: s + s q = (s − 1) + s q = +Inf, never Inf − Inf */
}

static inline void expq_f64(double x, double *s, double *q) {
    const double shift = 0x1.8p52;
    double xc = x < -708.0 ? -708.0 : x;
    xc = xc > 709.0 ? 709.0 : xc;
    const double kf = xc * 1.44269504088896338700 + shift;
    const double k = kf - shift;
    const int64_t ki = f64_bits(kf) - f64_bits(shift);
    double r = xc - k * 6.93147180369123816490e-01;
    r = r - k * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0; /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    double sc = f64_from_bits((ki + 1023) << 52);
    sc = x < -708.0 ? 0.0 : sc;
    sc = x > 709.0 ? __builtin_inf() : sc;
    *s = sc;
    *q = x > 709.0 ? 1.0 : p * r;
}

/* exported for the tests: exp and expm1 of n values */
void ssm_exp_expm1_f32(const float *x, float *e, float *em1, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float s, q;
        expq_f32(x[i], &s, &q);
        e[i] = s + s * q;
        em1[i] = (s - 1.0f) + s * q;
    }
}

void ssm_exp_expm1_f64(const double *x, double *e, double *em1, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        double s, q;
        expq_f64(x[i], &s, &q);
        e[i] = s + s * q;
        em1[i] = (s - 1.0) + s * q;
    }
}

/* ---------------------------------------------------------------- kernels */

#define SCAN_T float
#define SCAN_SFX f32
#include "scan_kernel.h"
#include "ssd_probe_kernel.h"
#undef SCAN_T
#undef SCAN_SFX

#define SCAN_T double
#define SCAN_SFX f64
#include "scan_kernel.h"
#include "ssd_probe_kernel.h"
#undef SCAN_T
#undef SCAN_SFX
