/* QuantDesk's native token loop: sample, stamp and decode in C, so no Python runs between two tokens.
 *
 * Compiled on the user's machine by desktop/llama/native.py (or for the double-click bundle by its build), and
 * loaded by the engine's generation loop in the child process. It links against nothing: llama.cpp's functions come
 * in as pointers from the library the child already loaded, so the helper works with whichever engine (CPU, Vulkan,
 * CUDA) is selected. The one layout it shares with llama.cpp is struct llama_batch; the Python side checks its size
 * against llama-cpp-python's own declaration (qd_batch_size) before use.
 */
#ifndef _WIN32
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#endif
#include <stdint.h>
#include <stddef.h>

#ifdef _WIN32
#include <windows.h>
#define QD_EXPORT __declspec(dllexport)
#else
#include <time.h>
#define QD_EXPORT __attribute__((visibility("default")))
#endif

typedef struct qd_batch {  /* struct llama_batch (llama.h) */
    int32_t n_tokens;
    int32_t *token;
    float *embd;
    int32_t *pos;
    int32_t *n_seq_id;
    int32_t **seq_id;
    int8_t *logits;
} qd_batch;

typedef int32_t (*qd_decode_fn)(void *ctx, qd_batch batch);
typedef int32_t (*qd_sample_fn)(void *sampler, void *ctx, int32_t idx);
typedef _Bool (*qd_is_eog_fn)(const void *vocab, int32_t token);
typedef float *(*qd_logits_fn)(void *ctx, int32_t i);

typedef struct qd_loop {
    void *ctx;
    void *sampler;          /* the reply's sampler chain; unused when argmax is set */
    const void *vocab;
    qd_batch *batch;        /* one reused batch: one sequence, logits on for slot 0 */
    qd_decode_fn decode;
    qd_sample_fn sample;
    qd_is_eog_fn is_eog;
    qd_logits_fn logits_ith;
    int32_t n_vocab;
    int32_t argmax;         /* 1: plain greedy, the highest logit (lowest id on a tie) instead of the sampler */
    int32_t check_eog;      /* 1: an end-of-generation token ends the loop before it is decoded */
    int32_t pos;            /* in/out: the position the next decode writes */
    volatile int32_t *stop; /* nonzero: stop before the next decode (set by another thread) */
} qd_loop;

enum { QD_CHUNK = 0, QD_EOG = 1, QD_STOPPED = 2, QD_DECODE_FAILED = 3, QD_NO_LOGITS = 4 };

QD_EXPORT int32_t qd_batch_size(void) { return (int32_t)sizeof(qd_batch); }
QD_EXPORT int32_t qd_loop_size(void) { return (int32_t)sizeof(qd_loop); }

/* llama.cpp's abort callback (ggml_abort_callback) for a long prompt: true once the int at `flag` is nonzero. Asked
 * after every graph node, where a Python callback would take the interpreter's lock each time. */
QD_EXPORT _Bool qd_should_abort(void *flag) { return flag != NULL && *(volatile int32_t *)flag != 0; }

QD_EXPORT double qd_now(void) {
#ifdef _WIN32
    LARGE_INTEGER counter, frequency;
    QueryPerformanceCounter(&counter);
    QueryPerformanceFrequency(&frequency);
    return (double)counter.QuadPart / (double)frequency.QuadPart;
#else
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
#endif
}

static int32_t highest_logit(const float *row, int32_t n) {
    /* eight running maxima the compiler can keep in vector registers; strict > keeps each lane's lowest id */
    float best[8];
    int32_t at[8];
    if (n <= 0) return 0;
    int32_t lanes = n < 8 ? n : 8;
    for (int32_t k = 0; k < lanes; k++) { best[k] = row[k]; at[k] = k; }
    int32_t i = lanes;
    for (; i + 8 <= n; i += 8) {
        for (int32_t k = 0; k < 8; k++) {
            if (row[i + k] > best[k]) { best[k] = row[i + k]; at[k] = i + k; }
        }
    }
    for (; i < n; i++) {
        if (row[i] > best[0]) { best[0] = row[i]; at[0] = i; }
    }
    int32_t winner = 0;
    for (int32_t k = 1; k < lanes; k++) {
        if (best[k] > best[winner] || (best[k] == best[winner] && at[k] < at[winner])) winner = k;
    }
    return at[winner];
}

/* Decode `pending` first when it is >= 0 (the token the caller accepted last), then up to n_max times: pick a
 * token, stamp it, store it, and decode it, unless it ends the reply (end of generation), it is the last of this
 * call (the caller decides whether the reply goes on) or a stop was asked for. Returns how many tokens were picked;
 * *status says why the loop ended, *decoded how many decodes were made (`pending` included), *rc
 * llama_decode's last code. */
QD_EXPORT int32_t qd_run(qd_loop *p, int32_t pending, int32_t n_max, int32_t *tokens, double *stamps,
                         int32_t *status, int32_t *decoded, int32_t *rc) {
    qd_batch *b = p->batch;
    *status = QD_CHUNK;
    *decoded = 0;
    *rc = 0;
    b->n_tokens = 1;
    b->logits[0] = 1;
    if (pending >= 0) {
        if (*p->stop) { *status = QD_STOPPED; return 0; }
        b->token[0] = pending;
        b->pos[0] = p->pos;
        *rc = p->decode(p->ctx, *b);
        if (*rc != 0) { *status = QD_DECODE_FAILED; return 0; }
        p->pos++;
        (*decoded)++;
    }
    for (int32_t i = 0; i < n_max; i++) {
        int32_t token;
        if (p->argmax) {
            const float *row = p->logits_ith(p->ctx, -1);
            if (row == NULL) { *status = QD_NO_LOGITS; return i; }
            token = highest_logit(row, p->n_vocab);
        } else {
            token = p->sample(p->sampler, p->ctx, -1);
        }
        stamps[i] = qd_now();
        tokens[i] = token;
        if (p->check_eog && p->is_eog(p->vocab, token)) { *status = QD_EOG; return i + 1; }
        if (i == n_max - 1) return i + 1;  /* QD_CHUNK: picked, not decoded */
        if (*p->stop) { *status = QD_STOPPED; return i + 1; }
        b->token[0] = token;
        b->pos[0] = p->pos;
        *rc = p->decode(p->ctx, *b);
        if (*rc != 0) { *status = QD_DECODE_FAILED; return i + 1; }
        p->pos++;
        (*decoded)++;
    }
    return n_max;
}
