/* SSD (Mamba-2) state statistics for the probes, included by scan.c once per dtype (SCAN_T, SCAN_SFX).
 *
 * Per head h (P channels of N state modes, group g = h / (H/G)), one decay per time step:
 *     h_t = exp(Δ_t a_h) · h_{t−1} + Δ_t x_t B_tᵀ             forward: Σ_n h², max_n |h| per (b, t, h, p)
 *     λ_t = ∂L/∂y_t ⊗ C_t + exp(Δ_{t+1} a_h) · λ_{t+1}          backward: Σ_n λ², max_n |λ|
 * and, for each reference (earlier inputs on the same batch), its own recurrence in the same pass with
 * Σ_n (h − h_ref)² and max_n |h − h_ref|. One task per (batch, head) keeps its P×N states in cache while t
 * advances; one exp per (b, t, h) (S6 needs one per state mode); nothing of size B·L·H·P·N is written.
 * ssd_probe_{fwd,bwd}_{f32,f64} return 0, 1 for bad arguments, 2 when out of memory. */

#define SCAN_CAT2(a, b) a##_##b
#define SCAN_CAT(a, b) SCAN_CAT2(a, b)
#define FN(name) SCAN_CAT(name, SCAN_SFX)
#define T SCAN_T

static inline T FN(ssd_decay)(T d, T a) {
    T s, q;
    FN(expq)(d * a, &s, &q);
    return s + s * q;
}

typedef struct {
    const ssd_probe_fwd_args *a;
    T *scratch; /* per thread: (1 + nref) · P · N states */
} FN(ssd_fwd_ctx);

static void FN(ssd_fwd_task)(void *vctx, int64_t task, int tid) {
    const FN(ssd_fwd_ctx) *c = (const FN(ssd_fwd_ctx) *)vctx;
    const ssd_probe_fwd_args *a = c->a;
    const int64_t L = a->L, H = a->H, P = a->P, G = a->G, N = a->N, nref = a->nref;
    const int64_t b = task / H, h = task % H, g = h / (H / G);
    T *S = c->scratch + (int64_t)tid * (1 + nref) * P * N;
    memset(S, 0, sizeof(T) * (size_t)((1 + nref) * P * N));
    for (int64_t t = 0; t < L; t++) {
        const int64_t bt = b * L + t;
        const T d = ((const T *)a->delta)[bt * H + h];
        const T dA = FN(ssd_decay)(d, ((const T *)a->A)[h]);
        const T *xv = (const T *)a->x + (bt * H + h) * P;
        const T *Bv = (const T *)a->B + (bt * G + g) * N;
        T *ssq = (T *)a->ssq + bt * H * P + h * P, *mx = (T *)a->mx + bt * H * P + h * P;
        for (int64_t p = 0; p < P; p++) {
            T *restrict s = S + p * N;
            const T dx = d * xv[p];
            T acc = 0, m = 0;
#pragma omp simd reduction(+ : acc) reduction(max : m)
            for (int64_t n = 0; n < N; n++) {
                const T v = dA * s[n] + dx * Bv[n];
                s[n] = v;
                acc += v * v;
                const T av = v < 0 ? -v : v;
                m = av > m ? av : m;
            }
            ssq[p] = acc;
            mx[p] = m;
        }
        for (int64_t k = 0; k < nref; k++) {
            const T rd = ((const T *)a->ref_delta[k])[bt * H + h];
            const T rdA = FN(ssd_decay)(rd, ((const T *)a->ref_A[k])[h]);
            const T *rx = (const T *)a->ref_x[k] + (bt * H + h) * P;
            const T *rB = (const T *)a->ref_B[k] + (bt * G + g) * N;
            T *rssq = (T *)a->ref_ssq[k] + bt * H * P + h * P, *rmx = (T *)a->ref_mx[k] + bt * H * P + h * P;
            T *R = S + (1 + k) * P * N;
            for (int64_t p = 0; p < P; p++) {
                T *restrict r = R + p * N;
                const T *restrict s = S + p * N;
                const T rdx = rd * rx[p];
                T acc = 0, m = 0;
#pragma omp simd reduction(+ : acc) reduction(max : m)
                for (int64_t n = 0; n < N; n++) {
                    const T v = rdA * r[n] + rdx * rB[n];
                    r[n] = v;
                    const T diff = s[n] - v;
                    acc += diff * diff;
                    const T av = diff < 0 ? -diff : diff;
                    m = av > m ? av : m;
                }
                rssq[p] = acc;
                rmx[p] = m;
            }
        }
    }
}

int FN(ssd_probe_fwd)(const ssd_probe_fwd_args *a) {
    if (a->batch < 1 || a->L < 1 || a->H < 1 || a->P < 1 || a->G < 1 || a->N < 1 || a->H % a->G ||
        a->nref < 0 || a->nref > SCAN_MAX_REFS || !a->x || !a->delta || !a->A || !a->B || !a->ssq || !a->mx)
        return 1;
    const int nthreads = clamp_threads(a->nthreads);
    FN(ssd_fwd_ctx) c = {a, malloc(sizeof(T) * (size_t)(nthreads * (1 + a->nref) * a->P * a->N))};
    if (!c.scratch) return 2;
    parallel_for(FN(ssd_fwd_task), &c, a->batch * a->H, nthreads);
    free(c.scratch);
    return 0;
}

typedef struct {
    const ssd_probe_bwd_args *a;
    T *scratch; /* per thread: P · N adjoint states */
} FN(ssd_bwd_ctx);

static void FN(ssd_bwd_task)(void *vctx, int64_t task, int tid) {
    const FN(ssd_bwd_ctx) *c = (const FN(ssd_bwd_ctx) *)vctx;
    const ssd_probe_bwd_args *a = c->a;
    const int64_t L = a->L, H = a->H, P = a->P, G = a->G, N = a->N;
    const int64_t b = task / H, h = task % H, g = h / (H / G);
    T *Lam = c->scratch + (int64_t)tid * P * N;
    memset(Lam, 0, sizeof(T) * (size_t)(P * N));
    T dA_next = 0; /* exp(Δ_{t+1} a_h); 0 past the last step */
    for (int64_t t = L - 1; t >= 0; t--) {
        const int64_t bt = b * L + t;
        const T *gy = (const T *)a->gy + (bt * H + h) * P;
        const T *Cv = (const T *)a->C + (bt * G + g) * N;
        T *ssq = (T *)a->gssq + bt * H * P + h * P, *mx = (T *)a->gmx + bt * H * P + h * P;
        for (int64_t p = 0; p < P; p++) {
            T *restrict lam = Lam + p * N;
            const T gp = gy[p];
            T acc = 0, m = 0;
#pragma omp simd reduction(+ : acc) reduction(max : m)
            for (int64_t n = 0; n < N; n++) {
                const T v = dA_next * lam[n] + gp * Cv[n];
                lam[n] = v;
                acc += v * v;
                const T av = v < 0 ? -v : v;
                m = av > m ? av : m;
            }
            ssq[p] = acc;
            mx[p] = m;
        }
        dA_next = FN(ssd_decay)(((const T *)a->delta)[bt * H + h], ((const T *)a->A)[h]);
    }
}

int FN(ssd_probe_bwd)(const ssd_probe_bwd_args *a) {
    if (a->batch < 1 || a->L < 1 || a->H < 1 || a->P < 1 || a->G < 1 || a->N < 1 || a->H % a->G || !a->gy ||
        !a->delta || !a->A || !a->C || !a->gssq || !a->gmx)
        return 1;
    const int nthreads = clamp_threads(a->nthreads);
    FN(ssd_bwd_ctx) c = {a, malloc(sizeof(T) * (size_t)(nthreads * a->P * a->N))};
    if (!c.scratch) return 2;
    parallel_for(FN(ssd_bwd_task), &c, a->batch * a->H, nthreads);
    free(c.scratch);
    return 0;
}

#undef T
#undef FN
#undef SCAN_CAT
#undef SCAN_CAT2
