/*
 * vitc_driver.c — checks a vitc-compiled model from C, through ABI v1 alone.
 *
 * It is the proof that a model library is usable by a plain C program: it needs nothing but
 * the ABI, libc, pthreads and (unless VITC_STATIC) dlfcn — not the vitc runtime, whose pool it
 * deliberately does not use, so that the model is also exercised by a parallel_for written
 * independently of ours. It must stay warning-free under -Wall -Wextra -std=c11 and clean under
 * valgrind, and it must build for aarch64 with the model linked statically:
 *
 *   cc -O2 -Wall -Wextra -std=c11 -pthread tests/c/vitc_driver.c -ldl -o vitc_driver
 *   cc ... -DVITC_STATIC -DVITC_PREFIX=vitc tests/c/vitc_driver.c model.a -o vitc_driver
 *
 * Modes (MODEL is the .so; in a VITC_STATIC build it is optional and ignored):
 *   vitc_driver MODEL --input X.npy --ref Y.npy [--rtol 1e-4] [--threads N]
 *       runs once, compares output i with the i-th --ref: OK iff
 *       max|out - ref| <= rtol * max(1, max|ref|). Prints
 *       "max_abs_diff=... tol=... threads=N OK|FAIL".
 *   vitc_driver MODEL --check-args [--input X.npy] [--threads N]
 *       bad calls (null inputs/outputs/element pointers, null or misaligned workspace) must
 *       return non-zero and leave every output untouched; good calls (exec NULL, a NULL
 *       parallel_for, our pool) must return 0, write every output element and agree bit for bit.
 *   vitc_driver MODEL --threads-identical K [--input X.npy] [--threads N] [--repeat R]
 *       K pthreads run the model at the same time, each with its own workspace (and, with
 *       N > 1, its own N-thread pool), R times each; every output must be bit-identical to a
 *       single-threaded run.
 *   vitc_driver MODEL --accuracy X.npy Y.npy [--threads N] [--min-accuracy A]
 *       runs each image of X ([count, ...input shape]) alone, takes the argmax of output 0 and
 *       prints "accuracy=0.9556 (344/360) threads=N OK|FAIL" against integer labels Y.
 * Common options: --prefix P (symbol prefix, default vitc), --threads N (total threads, caller
 * included; 0 = all CPUs; default 1), --verbose (shapes to stderr).
 * Without --input, inputs are a fixed pseudo-random pattern in [-1, 1).
 * Exit status: 0 OK, 1 check failed, 2 usage, file or library error.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifndef VITC_STATIC
#include <dlfcn.h>
#endif

/* ---- ABI v1 (DESIGN.md), under the guard generated headers share ---- */

#ifndef VITC_EXEC_DEFINED
#define VITC_EXEC_DEFINED
typedef void (*vitc_task_fn)(void *task_ctx, uint32_t index);
typedef struct vitc_exec {
  void (*parallel_for)(void *pool, uint32_t count, vitc_task_fn task, void *task_ctx);
  void *pool;
} vitc_exec;
#endif

#define ABI_VERSION 1u
#define WORKSPACE_ALIGN 64

typedef int32_t (*run_fn)(const float *const *inputs, float *const *outputs, void *workspace,
                          const vitc_exec *exec);

#ifdef VITC_STATIC
#ifndef VITC_PREFIX
#define VITC_PREFIX vitc
#endif
#define VITC_CAT_(a, b) a##b
#define VITC_CAT(a, b) VITC_CAT_(a, b)
#define VITC_FN(name) VITC_CAT(VITC_PREFIX, name)
#define VITC_STR_(x) #x
#define VITC_STR(x) VITC_STR_(x)
uint32_t VITC_FN(_abi_version)(void);
uint32_t VITC_FN(_num_inputs)(void);
uint32_t VITC_FN(_num_outputs)(void);
uint32_t VITC_FN(_input_rank)(uint32_t i);
const int64_t *VITC_FN(_input_shape)(uint32_t i);
uint32_t VITC_FN(_output_rank)(uint32_t i);
const int64_t *VITC_FN(_output_shape)(uint32_t i);
size_t VITC_FN(_workspace_size)(void);
int32_t VITC_FN(_run)(const float *const *inputs, float *const *outputs, void *workspace,
                      const vitc_exec *exec);
#endif

/* ---- errors ---- */

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
_Noreturn static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("vitc_driver: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) die("out of memory (%zu bytes)", n);
  return p;
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) die("out of memory (%zu x %zu bytes)", n, size);
  return p;
}

/* ---- the model ---- */

typedef struct model {
  void *handle; /* NULL when linked statically */
  uint32_t (*abi_version)(void);
  uint32_t (*num_inputs)(void);
  uint32_t (*num_outputs)(void);
  uint32_t (*input_rank)(uint32_t);
  const int64_t *(*input_shape)(uint32_t);
  uint32_t (*output_rank)(uint32_t);
  const int64_t *(*output_shape)(uint32_t);
  size_t (*workspace_size)(void);
  run_fn run;
  uint32_t n_in, n_out;
  size_t *in_len, *out_len; /* elements */
  size_t ws_size;           /* bytes */
} model;

#ifndef VITC_STATIC
/* dlsym returns void *; ISO C has no cast to a function pointer, memcpy is the portable way. */
static void resolve(void *handle, const char *prefix, const char *name, void *fn_slot) {
  char symbol[256];
  if ((size_t)snprintf(symbol, sizeof symbol, "%s_%s", prefix, name) >= sizeof symbol)
    die("symbol prefix too long: %s", prefix);
  dlerror();
  void *p = dlsym(handle, symbol);
  if (!p) {
    const char *err = dlerror();
    die("model has no symbol %s (wrong --prefix?): %s", symbol, err ? err : "not found");
  }
  memcpy(fn_slot, &p, sizeof p);
}
#endif

/* Element count of a shape, refusing negative dims and overflow. */
static size_t shape_len(const char *what, uint32_t i, uint32_t rank, const int64_t *dims) {
  size_t n = 1;
  if (rank > 0 && !dims) die("%s %u: rank %u but a NULL shape", what, i, rank);
  for (uint32_t d = 0; d < rank; d++) {
    if (dims[d] < 0) die("%s %u: negative dimension %lld", what, i, (long long)dims[d]);
    size_t dim = (size_t)dims[d];
    if (dim != 0 && n > SIZE_MAX / sizeof(float) / dim) die("%s %u: shape too large", what, i);
    n *= dim;
  }
  return n;
}

static void model_open(model *m, const char *path, const char *prefix) {
  memset(m, 0, sizeof *m);
#ifdef VITC_STATIC
  (void)path;
  if (prefix && strcmp(prefix, VITC_STR(VITC_PREFIX)) != 0)
    die("this driver was built for prefix %s, not %s", VITC_STR(VITC_PREFIX), prefix);
  m->abi_version = VITC_FN(_abi_version);
  m->num_inputs = VITC_FN(_num_inputs);
  m->num_outputs = VITC_FN(_num_outputs);
  m->input_rank = VITC_FN(_input_rank);
  m->input_shape = VITC_FN(_input_shape);
  m->output_rank = VITC_FN(_output_rank);
  m->output_shape = VITC_FN(_output_shape);
  m->workspace_size = VITC_FN(_workspace_size);
  m->run = VITC_FN(_run);
#else
  if (!path) die("no model library given");
  if (!prefix) prefix = "vitc";
  /* A bare file name would make dlopen search the library path instead of opening the file. */
  char *full = xmalloc(strlen(path) + 3);
  strcpy(full, strchr(path, '/') ? "" : "./");
  strcat(full, path);
  m->handle = dlopen(full, RTLD_NOW | RTLD_LOCAL);
  free(full);
  if (!m->handle) die("cannot load %s: %s", path, dlerror());
  resolve(m->handle, prefix, "abi_version", &m->abi_version);
  resolve(m->handle, prefix, "num_inputs", &m->num_inputs);
  resolve(m->handle, prefix, "num_outputs", &m->num_outputs);
  resolve(m->handle, prefix, "input_rank", &m->input_rank);
  resolve(m->handle, prefix, "input_shape", &m->input_shape);
  resolve(m->handle, prefix, "output_rank", &m->output_rank);
  resolve(m->handle, prefix, "output_shape", &m->output_shape);
  resolve(m->handle, prefix, "workspace_size", &m->workspace_size);
  resolve(m->handle, prefix, "run", &m->run);
#endif
  uint32_t version = m->abi_version();
  if (version != ABI_VERSION)
    die("model speaks ABI version %u, this driver speaks %u", version, ABI_VERSION);
  m->n_in = m->num_inputs();
  m->n_out = m->num_outputs();
  if (m->n_out == 0) die("model has no outputs");
  m->in_len = xcalloc(m->n_in, sizeof(size_t));
  m->out_len = xcalloc(m->n_out, sizeof(size_t));
  for (uint32_t i = 0; i < m->n_in; i++)
    m->in_len[i] = shape_len("input", i, m->input_rank(i), m->input_shape(i));
  for (uint32_t i = 0; i < m->n_out; i++)
    m->out_len[i] = shape_len("output", i, m->output_rank(i), m->output_shape(i));
  m->ws_size = m->workspace_size();
}

static void print_shape(const char *what, uint32_t i, uint32_t rank, const int64_t *dims) {
  fprintf(stderr, "  %s %u: [", what, i);
  for (uint32_t d = 0; d < rank; d++) fprintf(stderr, "%s%lld", d ? ", " : "", (long long)dims[d]);
  fprintf(stderr, "]\n");
}

static void model_describe(const model *m) {
  fprintf(stderr, "model: %u input(s), %u output(s), workspace %zu bytes\n", m->n_in, m->n_out,
          m->ws_size);
  for (uint32_t i = 0; i < m->n_in; i++) print_shape("input", i, m->input_rank(i), m->input_shape(i));
  for (uint32_t i = 0; i < m->n_out; i++)
    print_shape("output", i, m->output_rank(i), m->output_shape(i));
}

static void model_close(model *m) {
  free(m->in_len);
  free(m->out_len);
#ifndef VITC_STATIC
  if (m->handle) dlclose(m->handle);
#endif
  memset(m, 0, sizeof *m);
}

/* A 64-byte aligned workspace with WORKSPACE_ALIGN spare bytes, so that the misaligned
 * pointers --check-args passes still have ws_size bytes behind them. */
static void *workspace_new(const model *m) {
  size_t size = m->ws_size + WORKSPACE_ALIGN;
  size = (size + WORKSPACE_ALIGN - 1) / WORKSPACE_ALIGN * WORKSPACE_ALIGN;
  void *ws = aligned_alloc(WORKSPACE_ALIGN, size);
  if (!ws) die("cannot allocate a %zu-byte workspace", size);
  memset(ws, 0, size);
  return ws;
}

/* One float buffer per output. */
static float **outputs_new(const model *m) {
  float **out = xcalloc(m->n_out, sizeof(float *));
  for (uint32_t i = 0; i < m->n_out; i++) out[i] = xcalloc(m->out_len[i], sizeof(float));
  return out;
}

static void outputs_free(const model *m, float **out) {
  for (uint32_t i = 0; i < m->n_out; i++) free(out[i]);
  free(out);
}

/* ---- a pthread parallel_for, independent of the vitc runtime's ---- */

/* Persistent workers woken per job; every worker checks in for every job (pending), so the
 * job fields are never rewritten while a worker may still read them. Indices are claimed from
 * one atomic counter. */
typedef struct pool {
  pthread_mutex_t mu;
  pthread_cond_t start, done;
  pthread_t *workers;
  uint32_t n_workers;
  uint64_t generation;
  int shutdown;
  vitc_task_fn task;
  void *task_ctx;
  uint32_t count;
  uint32_t pending;
  atomic_uint_fast64_t next;
  atomic_uint_fast64_t calls; /* parallel_for calls, for --verbose */
} pool;

static void pool_claim(pool *p, vitc_task_fn task, void *ctx, uint32_t count) {
  for (;;) {
    uint_fast64_t i = atomic_fetch_add(&p->next, 1);
    if (i >= count) return;
    task(ctx, (uint32_t)i);
  }
}

static void *pool_worker(void *arg) {
  pool *p = arg;
  uint64_t seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->shutdown && p->generation == seen) pthread_cond_wait(&p->start, &p->mu);
    if (p->shutdown) break;
    seen = p->generation;
    vitc_task_fn task = p->task;
    void *ctx = p->task_ctx;
    uint32_t count = p->count;
    pthread_mutex_unlock(&p->mu);
    pool_claim(p, task, ctx, count);
    pthread_mutex_lock(&p->mu);
    if (--p->pending == 0) pthread_cond_signal(&p->done);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

/* threads = total, the calling thread included. */
static pool *pool_new(uint32_t threads) {
  pool *p = xcalloc(1, sizeof *p);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->start, NULL);
  pthread_cond_init(&p->done, NULL);
  atomic_init(&p->next, 0);
  atomic_init(&p->calls, 0);
  p->n_workers = threads > 1 ? threads - 1 : 0;
  p->workers = xcalloc(p->n_workers, sizeof(pthread_t));
  for (uint32_t i = 0; i < p->n_workers; i++) {
    int rc = pthread_create(&p->workers[i], NULL, pool_worker, p);
    if (rc != 0) die("cannot start thread %u of %u: %s", i + 1, threads, strerror(rc));
  }
  return p;
}

static void pool_parallel_for(void *pool_ptr, uint32_t count, vitc_task_fn task, void *ctx) {
  pool *p = pool_ptr;
  if (p) atomic_fetch_add(&p->calls, 1);
  if (!task || count == 0) return;
  if (!p || p->n_workers == 0 || count == 1) {
    for (uint32_t i = 0; i < count; i++) task(ctx, i);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->task = task;
  p->task_ctx = ctx;
  p->count = count;
  atomic_store(&p->next, 0);
  p->pending = p->n_workers;
  p->generation++;
  pthread_cond_broadcast(&p->start);
  pthread_mutex_unlock(&p->mu);
  pool_claim(p, task, ctx, count);
  pthread_mutex_lock(&p->mu);
  while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

static void pool_free(pool *p) {
  pthread_mutex_lock(&p->mu);
  p->shutdown = 1;
  pthread_cond_broadcast(&p->start);
  pthread_mutex_unlock(&p->mu);
  for (uint32_t i = 0; i < p->n_workers; i++) pthread_join(p->workers[i], NULL);
  pthread_cond_destroy(&p->start);
  pthread_cond_destroy(&p->done);
  pthread_mutex_destroy(&p->mu);
  free(p->workers);
  free(p);
}

/* ---- .npy reading: little-endian, C order; floats become f32, integers int64 ---- */

typedef struct npy {
  int ndim;
  int64_t shape[32];
  size_t count;
  float *f;   /* float data (from f4/f8, or from integers when asked for floats) */
  int64_t *i; /* integer data (from i1/u1/i4/i8), when asked for integers */
} npy;

static uint64_t load_le(const unsigned char *b, int n) {
  uint64_t v = 0;
  for (int k = n - 1; k >= 0; k--) v = v << 8 | b[k];
  return v;
}

/* Finds the value after 'key': in the header dict, or NULL. */
static const char *npy_field(const char *header, const char *key) {
  char quoted[32];
  snprintf(quoted, sizeof quoted, "'%s'", key);
  const char *p = strstr(header, quoted);
  if (!p) return NULL;
  p += strlen(quoted);
  while (*p == ' ') p++;
  if (*p != ':') return NULL;
  p++;
  while (*p == ' ') p++;
  return p;
}

static void npy_load(const char *path, npy *a, int want_float) {
  memset(a, 0, sizeof *a);
  FILE *f = fopen(path, "rb");
  if (!f) die("cannot open %s: %s", path, strerror(errno));
  size_t cap = 1 << 16, len = 0;
  unsigned char *buf = xmalloc(cap);
  for (;;) {
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (len < cap) break;
    cap *= 2;
    unsigned char *bigger = realloc(buf, cap);
    if (!bigger) die("out of memory reading %s", path);
    buf = bigger;
  }
  int read_error = ferror(f);
  fclose(f);
  if (read_error) die("cannot read %s", path);

  if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) die("%s: not a .npy file", path);
  size_t header_len, header_start;
  if (buf[6] == 1) {
    header_len = (size_t)load_le(buf + 8, 2);
    header_start = 10;
  } else if (buf[6] == 2 || buf[6] == 3) {
    if (len < 12) die("%s: truncated header", path);
    header_len = (size_t)load_le(buf + 8, 4);
    header_start = 12;
  } else {
    die("%s: unsupported .npy version %u", path, buf[6]);
  }
  if (header_len > len - header_start) die("%s: truncated header", path);
  char *header = xmalloc(header_len + 1);
  memcpy(header, buf + header_start, header_len);
  header[header_len] = '\0';

  const char *p = npy_field(header, "descr");
  char descr[8] = {0};
  if (!p || *p != '\'' || sscanf(p + 1, "%7[^']", descr) != 1) die("%s: no 'descr'", path);
  p = npy_field(header, "fortran_order");
  if (!p || strncmp(p, "False", 5) != 0) die("%s: only C-order arrays are supported", path);
  p = npy_field(header, "shape");
  if (!p || *p != '(') die("%s: no 'shape'", path);
  p++;
  a->count = 1;
  for (;;) {
    while (*p == ' ' || *p == ',') p++;
    if (*p == ')') break;
    char *end;
    long long dim = strtoll(p, &end, 10);
    if (end == p || dim < 0) die("%s: bad shape", path);
    if (a->ndim == (int)(sizeof a->shape / sizeof a->shape[0])) die("%s: too many dims", path);
    a->shape[a->ndim++] = dim;
    if (dim != 0 && a->count > SIZE_MAX / 8 / (size_t)dim) die("%s: array too large", path);
    a->count *= (size_t)dim;
    p = end;
  }
  free(header);

  int size, is_float, is_signed = 1;
  if (!strcmp(descr, "<f4")) size = 4, is_float = 1;
  else if (!strcmp(descr, "<f8")) size = 8, is_float = 1;
  else if (!strcmp(descr, "<i8")) size = 8, is_float = 0;
  else if (!strcmp(descr, "<i4")) size = 4, is_float = 0;
  else if (!strcmp(descr, "|i1")) size = 1, is_float = 0;
  else if (!strcmp(descr, "|u1")) size = 1, is_float = 0, is_signed = 0;
  else die("%s: unsupported dtype %s (want <f4, <f8, <i8, <i4, |i1 or |u1)", path, descr);
  if (!want_float && is_float) die("%s: expected an integer array, got %s", path, descr);

  const unsigned char *data = buf + header_start + header_len;
  if (a->count > (len - header_start - header_len) / (size_t)size)
    die("%s: data truncated (%zu elements expected)", path, a->count);
  if (want_float) a->f = xcalloc(a->count, sizeof(float));
  else a->i = xcalloc(a->count, sizeof(int64_t));
  for (size_t k = 0; k < a->count; k++) {
    uint64_t bits = load_le(data + k * (size_t)size, size);
    double v;
    int64_t iv = 0;
    if (is_float && size == 4) {
      uint32_t b32 = (uint32_t)bits;
      float fv;
      memcpy(&fv, &b32, sizeof fv);
      v = fv;
    } else if (is_float) {
      memcpy(&v, &bits, sizeof v);
    } else {
      /* Sign-extend from `size` bytes. */
      if (is_signed && size < 8 && (bits >> (size * 8 - 1)) & 1) bits |= ~(uint64_t)0 << (size * 8);
      memcpy(&iv, &bits, sizeof iv);
      v = (double)iv;
    }
    if (want_float) a->f[k] = (float)v;
    else a->i[k] = iv;
  }
  free(buf);
}

static void npy_free(npy *a) {
  free(a->f);
  free(a->i);
  memset(a, 0, sizeof *a);
}

static void npy_shape_str(const npy *a, char *out, size_t cap) {
  size_t n = (size_t)snprintf(out, cap, "[");
  for (int d = 0; d < a->ndim && n < cap; d++)
    n += (size_t)snprintf(out + n, cap - n, "%s%lld", d ? ", " : "", (long long)a->shape[d]);
  if (n < cap) snprintf(out + n, cap - n, "]");
}

/* ---- helpers ---- */

static double absd(double x) { return x < 0 ? -x : x; }

static int finite(double x) { return x == x && x - x == 0.0; }

/* A fixed pattern in [-1, 1), the same on every machine, for runs without --input. */
static void fill_pattern(float *x, size_t n, uint32_t seed) {
  uint32_t s = seed * 2654435761u + 12345u;
  for (size_t k = 0; k < n; k++) {
    s = s * 1664525u + 1013904223u;
    x[k] = (float)((double)(s >> 8) / (double)(1u << 24) * 2.0 - 1.0);
  }
}

/* Inputs from the --input files, or the pattern. Each input buffer is its own allocation so
 * valgrind sees any read past its end. */
static float **inputs_load(const model *m, const char **files, uint32_t n_files) {
  if (n_files != 0 && n_files != m->n_in)
    die("model takes %u input(s), got %u --input file(s)", m->n_in, n_files);
  float **in = xcalloc(m->n_in, sizeof(float *));
  for (uint32_t i = 0; i < m->n_in; i++) {
    in[i] = xcalloc(m->in_len[i], sizeof(float));
    if (n_files == 0) {
      fill_pattern(in[i], m->in_len[i], i);
      continue;
    }
    npy a;
    npy_load(files[i], &a, 1);
    if (a.count != m->in_len[i]) {
      char shape[256];
      npy_shape_str(&a, shape, sizeof shape);
      die("%s has shape %s (%zu elements), model input %u takes %zu", files[i], shape, a.count,
          i, m->in_len[i]);
    }
    memcpy(in[i], a.f, a.count * sizeof(float));
    npy_free(&a);
  }
  return in;
}

static void inputs_free(const model *m, float **in) {
  for (uint32_t i = 0; i < m->n_in; i++) free(in[i]);
  free(in);
}

static void run_or_die(const model *m, float **in, float **out, void *ws, const vitc_exec *exec) {
  int32_t rc = m->run((const float *const *)in, out, ws, exec);
  if (rc != 0) die("model run failed with code %d", rc);
}

/* ---- mode: compare with reference outputs ---- */

static int mode_compare(const model *m, float **in, const char **refs, uint32_t n_refs,
                        double rtol, uint32_t threads, pool *p) {
  if (n_refs == 0) die("nothing to compare: give --ref Y.npy (or another mode)");
  if (n_refs > m->n_out) die("%u --ref files but the model has %u output(s)", n_refs, m->n_out);
  void *ws = workspace_new(m);
  float **out = outputs_new(m);
  vitc_exec exec = {pool_parallel_for, p};
  run_or_die(m, in, out, ws, &exec);

  double max_diff = 0, max_ref = 0;
  for (uint32_t o = 0; o < n_refs; o++) {
    npy ref;
    npy_load(refs[o], &ref, 1);
    if (ref.count != m->out_len[o]) {
      char shape[256];
      npy_shape_str(&ref, shape, sizeof shape);
      die("%s has shape %s (%zu elements), model output %u has %zu", refs[o], shape, ref.count,
          o, m->out_len[o]);
    }
    for (size_t k = 0; k < ref.count; k++) {
      double r = ref.f[k], d = absd((double)out[o][k] - r);
      if (!finite(d)) d = INFINITY; /* NaN or inf anywhere fails */
      if (d > max_diff) max_diff = d;
      if (absd(r) > max_ref) max_ref = absd(r);
    }
    npy_free(&ref);
  }
  double tol = rtol * (max_ref > 1 ? max_ref : 1);
  int ok = max_diff <= tol;
  printf("max_abs_diff=%.3e tol=%.3e threads=%u %s\n", max_diff, tol, threads, ok ? "OK" : "FAIL");
  outputs_free(m, out);
  free(ws);
  return ok ? 0 : 1;
}

/* ---- mode: argument checks ---- */

static const uint32_t SENTINEL = 0x7fa5a5a5u; /* a NaN no model computes by chance */

static void fill_sentinel(const model *m, float **out) {
  for (uint32_t o = 0; o < m->n_out; o++)
    for (size_t k = 0; k < m->out_len[o]; k++) memcpy(&out[o][k], &SENTINEL, sizeof SENTINEL);
}

/* Elements of all outputs still holding the sentinel. */
static size_t count_sentinel(const model *m, float **out) {
  size_t n = 0;
  for (uint32_t o = 0; o < m->n_out; o++)
    for (size_t k = 0; k < m->out_len[o]; k++) n += memcmp(&out[o][k], &SENTINEL, sizeof SENTINEL) == 0;
  return n;
}

static size_t total_out(const model *m) {
  size_t n = 0;
  for (uint32_t o = 0; o < m->n_out; o++) n += m->out_len[o];
  return n;
}

static int outputs_equal(const model *m, float **a, float **b) {
  for (uint32_t o = 0; o < m->n_out; o++)
    if (memcmp(a[o], b[o], m->out_len[o] * sizeof(float)) != 0) return 0;
  return 1;
}

static int mode_check_args(const model *m, float **in, uint32_t threads, pool *p) {
  unsigned char *ws = workspace_new(m);
  float **out = outputs_new(m);
  /* Pointer arrays with one NULL element (the first), the rest valid. */
  const float **in_hole = xcalloc(m->n_in, sizeof(float *));
  float **out_hole = xcalloc(m->n_out, sizeof(float *));
  for (uint32_t i = 1; i < m->n_in; i++) in_hole[i] = in[i];
  for (uint32_t o = 1; o < m->n_out; o++) out_hole[o] = out[o];

  struct {
    const char *name;
    const float *const *in;
    float *const *out;
    void *ws;
  } bad[] = {
      {"null inputs", NULL, out, ws},
      {"null outputs", (const float *const *)in, NULL, ws},
      {"null workspace", (const float *const *)in, out, NULL},
      {"workspace misaligned by 1", (const float *const *)in, out, ws + 1},
      {"workspace misaligned by 32", (const float *const *)in, out, ws + 32},
      {"null inputs[0]", in_hole, out, ws},
      {"null outputs[0]", (const float *const *)in, out_hole, ws},
  };
  size_t n_bad = 0, rejected = 0;
  int ok = 1;
  fill_sentinel(m, out);
  for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++) {
    /* A model without inputs may ignore its input pointers. */
    if (m->n_in == 0 && (bad[c].in == NULL || bad[c].in == in_hole)) continue;
    n_bad++;
    int32_t rc = m->run(bad[c].in, bad[c].out, bad[c].ws, NULL);
    size_t untouched = count_sentinel(m, out);
    if (rc != 0) rejected++;
    if (rc == 0 || untouched != total_out(m)) {
      ok = 0;
      fprintf(stderr, "check-args: %s: returned %d, %zu of %zu output elements changed\n", bad[c].name,
              rc, total_out(m) - untouched, total_out(m));
      fill_sentinel(m, out);
    }
  }

  /* Good calls: exec NULL, exec with a NULL parallel_for, exec with our pool. */
  float **ref = outputs_new(m);
  vitc_exec no_pf = {NULL, NULL}, with_pool = {pool_parallel_for, p};
  struct {
    const char *name;
    const vitc_exec *exec;
  } good[] = {{"exec NULL", NULL}, {"exec.parallel_for NULL", &no_pf}, {"exec with pool", &with_pool}};
  size_t n_good = sizeof good / sizeof good[0], passed = 0;
  for (size_t c = 0; c < n_good; c++) {
    float **dst = c == 0 ? ref : out;
    fill_sentinel(m, dst);
    int32_t rc = m->run((const float *const *)in, dst, ws, good[c].exec);
    size_t unwritten = count_sentinel(m, dst);
    int same = c == 0 || outputs_equal(m, ref, out);
    if (rc == 0 && unwritten == 0 && same) {
      passed++;
    } else {
      ok = 0;
      fprintf(stderr, "check-args: %s: returned %d, %zu output elements unwritten%s\n", good[c].name,
              rc, unwritten, same ? "" : ", output differs from the exec NULL run");
    }
  }
  printf("check_args: rejected=%zu/%zu good=%zu/%zu threads=%u %s\n", rejected, n_bad, passed, n_good,
         threads, ok ? "OK" : "FAIL");
  outputs_free(m, ref);
  free(in_hole);
  free(out_hole);
  outputs_free(m, out);
  free(ws);
  return ok ? 0 : 1;
}

/* ---- mode: concurrent runs are bit-identical ---- */

typedef struct runner {
  const model *m;
  float **in, **ref;
  uint32_t threads, repeat;
  pthread_barrier_t *start;
  uint32_t mismatches, failures;
} runner;

static void *runner_main(void *arg) {
  runner *r = arg;
  const model *m = r->m;
  void *ws = workspace_new(m);
  float **out = outputs_new(m);
  pool *p = r->threads > 1 ? pool_new(r->threads) : NULL;
  vitc_exec exec = {pool_parallel_for, p};
  pthread_barrier_wait(r->start); /* all runners start together, to overlap their runs */
  for (uint32_t k = 0; k < r->repeat; k++) {
    fill_sentinel(m, out);
    if (m->run((const float *const *)r->in, out, ws, p ? &exec : NULL) != 0) r->failures++;
    else if (!outputs_equal(m, r->ref, out)) r->mismatches++;
  }
  if (p) pool_free(p);
  outputs_free(m, out);
  free(ws);
  return NULL;
}

static int mode_threads_identical(const model *m, float **in, uint32_t runners, uint32_t threads,
                                  uint32_t repeat) {
  if (runners == 0) die("--threads-identical needs at least 1 thread");
  float **ref = outputs_new(m);
  void *ws = workspace_new(m);
  run_or_die(m, in, ref, ws, NULL);
  free(ws);

  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, runners);
  runner *rs = xcalloc(runners, sizeof(runner));
  pthread_t *tids = xcalloc(runners, sizeof(pthread_t));
  for (uint32_t t = 0; t < runners; t++) {
    rs[t] = (runner){m, in, ref, threads, repeat, &start, 0, 0};
    int rc = pthread_create(&tids[t], NULL, runner_main, &rs[t]);
    if (rc != 0) die("cannot start runner thread: %s", strerror(rc));
  }
  uint32_t mismatches = 0, failures = 0;
  for (uint32_t t = 0; t < runners; t++) {
    pthread_join(tids[t], NULL);
    mismatches += rs[t].mismatches;
    failures += rs[t].failures;
  }
  pthread_barrier_destroy(&start);
  int ok = mismatches == 0 && failures == 0;
  printf("threads_identical=%u runs=%u mismatches=%u failures=%u threads=%u %s\n", runners,
         runners * repeat, mismatches, failures, threads, ok ? "OK" : "FAIL");
  free(tids);
  free(rs);
  outputs_free(m, ref);
  return ok ? 0 : 1;
}

/* ---- mode: top-1 accuracy over a batch ---- */

static int mode_accuracy(const model *m, const char *x_path, const char *y_path, uint32_t threads,
                         pool *p, double min_accuracy) {
  if (m->n_in != 1) die("--accuracy needs a model with one input, this one has %u", m->n_in);
  npy x, y;
  npy_load(x_path, &x, 1);
  npy_load(y_path, &y, 0);
  if (x.ndim < 1 || x.shape[0] == 0) die("%s: empty batch", x_path);
  size_t n = (size_t)x.shape[0];
  if (x.count / n != m->in_len[0]) {
    char shape[256];
    npy_shape_str(&x, shape, sizeof shape);
    die("%s has shape %s: %zu elements per image, the model input takes %zu", x_path, shape,
        x.count / n, m->in_len[0]);
  }
  if (y.count != n) die("%s has %zu labels for %zu images", y_path, y.count, n);

  void *ws = workspace_new(m);
  float **out = outputs_new(m);
  float *image = xcalloc(m->in_len[0], sizeof(float));
  float *in[1] = {image};
  vitc_exec exec = {pool_parallel_for, p};
  size_t correct = 0;
  for (size_t k = 0; k < n; k++) {
    memcpy(image, x.f + k * m->in_len[0], m->in_len[0] * sizeof(float));
    run_or_die(m, in, out, ws, &exec);
    size_t best = 0;
    for (size_t c = 1; c < m->out_len[0]; c++)
      if (out[0][c] > out[0][best]) best = c;
    correct += finite(out[0][best]) && (int64_t)best == y.i[k];
  }
  double accuracy = (double)correct / (double)n;
  int ok = accuracy >= min_accuracy;
  printf("accuracy=%.4f (%zu/%zu) threads=%u %s\n", accuracy, correct, n, threads, ok ? "OK" : "FAIL");
  free(image);
  outputs_free(m, out);
  free(ws);
  npy_free(&x);
  npy_free(&y);
  return ok ? 0 : 1;
}

/* ---- main ---- */

static void usage(void) {
  fputs("usage: vitc_driver MODEL.so [--prefix P] [--threads N] [--verbose] MODE\n"
        "  (default)                  --input X.npy ... --ref Y.npy ... [--rtol 1e-4]\n"
        "  --check-args               [--input X.npy ...]\n"
        "  --threads-identical K      [--input X.npy ...] [--repeat R]\n"
        "  --accuracy X.npy Y.npy     [--min-accuracy A]\n",
        stderr);
  exit(2);
}

static uint32_t parse_u32(const char *s, const char *opt) {
  char *end;
  unsigned long v = strtoul(s, &end, 10);
  if (*s == '\0' || *end != '\0' || s[0] == '-' || v > UINT32_MAX) die("%s: not a count: %s", opt, s);
  return (uint32_t)v;
}

static double parse_f64(const char *s, const char *opt) {
  char *end;
  double v = strtod(s, &end);
  if (*s == '\0' || *end != '\0' || !(v >= 0)) die("%s: not a non-negative number: %s", opt, s);
  return v;
}

int main(int argc, char **argv) {
  const char *model_path = NULL, *prefix = NULL, *acc_x = NULL, *acc_y = NULL;
  const char **inputs = xcalloc((size_t)argc, sizeof(char *));
  const char **refs = xcalloc((size_t)argc, sizeof(char *));
  uint32_t n_inputs = 0, n_refs = 0, threads = 1, identical = 0, repeat = 3;
  int check_args = 0, verbose = 0;
  double rtol = 1e-4, min_accuracy = 0;

  for (int k = 1; k < argc; k++) {
    const char *a = argv[k];
#define NEXT() (k + 1 < argc ? argv[++k] : (die("%s needs a value", a), ""))
    if (!strcmp(a, "--prefix")) prefix = NEXT();
    else if (!strcmp(a, "--threads")) threads = parse_u32(NEXT(), a);
    else if (!strcmp(a, "--input")) inputs[n_inputs++] = NEXT();
    else if (!strcmp(a, "--ref")) refs[n_refs++] = NEXT();
    else if (!strcmp(a, "--rtol")) rtol = parse_f64(NEXT(), a);
    else if (!strcmp(a, "--check-args")) check_args = 1;
    else if (!strcmp(a, "--threads-identical")) identical = parse_u32(NEXT(), a);
    else if (!strcmp(a, "--repeat")) repeat = parse_u32(NEXT(), a);
    else if (!strcmp(a, "--accuracy")) acc_x = NEXT(), acc_y = NEXT();
    else if (!strcmp(a, "--min-accuracy")) min_accuracy = parse_f64(NEXT(), a);
    else if (!strcmp(a, "--verbose")) verbose = 1;
    else if (!strcmp(a, "--help") || !strcmp(a, "-h")) usage();
    else if (a[0] == '-' && a[1] != '\0') die("unknown option %s", a);
    else if (!model_path) model_path = a;
    else die("unexpected argument %s", a);
#undef NEXT
  }
  if (check_args + (identical > 0) + (acc_x != NULL) > 1) die("give one mode at a time");
  if (threads == 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    threads = cpus > 0 ? (uint32_t)cpus : 1;
  }

  model m;
  model_open(&m, model_path, prefix);
  if (verbose) model_describe(&m);

  int status;
  if (acc_x) {
    pool *p = pool_new(threads);
    status = mode_accuracy(&m, acc_x, acc_y, threads, p, min_accuracy);
    pool_free(p);
  } else {
    float **in = inputs_load(&m, inputs, n_inputs);
    if (identical) {
      status = mode_threads_identical(&m, in, identical, threads, repeat);
    } else {
      pool *p = pool_new(threads);
      status = check_args ? mode_check_args(&m, in, threads, p)
                          : mode_compare(&m, in, refs, n_refs, rtol, threads, p);
      if (verbose)
        fprintf(stderr, "parallel_for calls: %llu\n", (unsigned long long)atomic_load(&p->calls));
      pool_free(p);
    }
    inputs_free(&m, in);
  }
  model_close(&m);
  free(inputs);
  free(refs);
  return status;
}
