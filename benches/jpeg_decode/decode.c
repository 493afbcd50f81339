/* CPU time of one JPEG decode, as imgedge decodes (TurboJPEG 3, whole file in memory, stop on
 * warnings, 500-scan limit, RGB out at a scale): benches/jpeg_decode.sh links it against upstream's and the shipped libjpeg-turbo.
 *
 *   decode ITERS EIGHTHS FILE...   prints, per file, the least CPU ms of ITERS decodes
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "turbojpeg.h"

static double cpu_ms(void)
{
  struct timespec t;

  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
  int iters, num, den = 8, g, a, i;

  if (argc < 4) return 2;
  iters = atoi(argv[1]);
  num = atoi(argv[2]);
  for (g = 8; g > 1; g /= 2)    /* tj3SetScalingFactor wants 1/2, not 4/8 */
    if (num % g == 0) { num /= g; den /= g; break; }
  for (a = 3; a < argc; a++) {
    FILE *f = fopen(argv[a], "rb");
    long len;
    unsigned char *jpeg, *rgb;
    tjhandle tj = tj3Init(TJINIT_DECOMPRESS);
    tjscalingfactor sf = { num, den };
    int w, h;
    double best = 1e30;

    if (!f || !tj) return 2;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    rewind(f);
    jpeg = malloc(len);
    if (!jpeg || fread(jpeg, 1, len, f) != (size_t)len) return 2;
    fclose(f);
    /* imgedge's settings (src/origin/transform/jpeg.rs; tests/data/tjdecode.c has the same) */
    if (tj3Set(tj, TJPARAM_STOPONWARNING, 1) || tj3Set(tj, TJPARAM_SCANLIMIT, 500) ||
        tj3DecompressHeader(tj, jpeg, len) || tj3SetScalingFactor(tj, sf)) {
      fprintf(stderr, "%s: %s\n", argv[a], tj3GetErrorStr(tj));
      return 1;
    }
    w = TJSCALED(tj3Get(tj, TJPARAM_JPEGWIDTH), sf);
    h = TJSCALED(tj3Get(tj, TJPARAM_JPEGHEIGHT), sf);
    rgb = malloc((size_t)w * h * 3);
    for (i = 0; i < iters; i++) {
      double t0 = cpu_ms(), t;

      if (tj3Decompress8(tj, jpeg, len, rgb, 0, TJPF_RGB)) {
        fprintf(stderr, "%s: %s\n", argv[a], tj3GetErrorStr(tj));
        return 1;
      }
      t = cpu_ms() - t0;
      if (t < best) best = t;
    }
    printf("%.3f\n", best);
    free(rgb);
    free(jpeg);
    tj3Destroy(tj);
  }
  return 0;
}
