/*
 * fma_probe.c — the FMA peak of this machine, for bench.py's "% of peak" column.
 *
 * Each of T threads runs a loop of 16 independent vector FMAs (no loads, no dependencies longer
 * than 16 iterations deep), so the loop is bound only by FMA throughput. Built by bench.py with
 * -DWIDTH=512 (AVX-512, zmm) or -DWIDTH=256 (AVX2, ymm); prints one number: GFLOP/s of all
 * threads together, the best of a few repetitions.
 *
 *   cc -O2 -pthread -DWIDTH=512 fma_probe.c -o fma_probe && ./fma_probe 2
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if WIDTH == 512
#define REG "zmm"
#define LANES 16
#else
#define REG "ymm"
#define LANES 8
#endif

#define F(r) "vfmadd231ps %%" REG "14, %%" REG "15, %%" REG #r "\n\t"
#define ITERS 40000000L

static void *run(void *arg) {
  long n = ITERS;
  (void)arg;
  __asm__ volatile("vxorps %%xmm14, %%xmm14, %%xmm14\n\t"
                   "vxorps %%xmm15, %%xmm15, %%xmm15\n\t"
                   "1:\n\t" F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11)
                       F(12) F(13) "dec %0\n\t"
                   "jnz 1b\n\t"
                   : "+r"(n)
                   :
                   : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                     "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  if (threads < 1 || threads > 256) return 2;
  pthread_t tid[256];
  double best = 1e30;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = now();
    for (int i = 1; i < threads; i++) pthread_create(&tid[i], NULL, run, NULL);
    run(NULL);
    for (int i = 1; i < threads; i++) pthread_join(tid[i], NULL);
    double t = now() - t0;
    if (t < best) best = t;
  }
  /* 14 FMAs per iteration, 2 flops per lane each. */
  printf("%.2f\n", (double)ITERS * 14 * LANES * 2 * threads / best * 1e-9);
  return 0;
}
