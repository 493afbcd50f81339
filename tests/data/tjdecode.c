/* Upstream's side of tests/data/make_jpeg_decode_hashes.py: decode one JPEG as
 * src/origin/transform/jpeg.rs `decode` does (TurboJPEG 3 API, whole file in memory, stop on
 * warnings, 500-scan limit, RGB out at scale/8) and write the samples to stdout, or exit 1.
 *
 *   tjdecode FILE EIGHTHS > samples
 */
#include <stdio.h>
#include <stdlib.h>
#include "turbojpeg.h"

int main(int argc, char **argv)
{
  FILE *f;
  long len;
  unsigned char *jpeg, *rgb;
  int w, h, num, den, g;
  tjhandle tj;
  tjscalingfactor sf;

  if (argc != 3 || !(f = fopen(argv[1], "rb"))) return 2;
  fseek(f, 0, SEEK_END);
  len = ftell(f);
  rewind(f);
  jpeg = malloc(len);
  if (!jpeg || fread(jpeg, 1, len, f) != (size_t)len) return 2;
  fclose(f);
  num = atoi(argv[2]);
  den = 8;
  for (g = 8; g > 1; g /= 2)    /* tj3SetScalingFactor wants 1/2, not 4/8 */
    if (num % g == 0) { num /= g; den /= g; break; }
  sf.num = num;
  sf.denom = den;
  tj = tj3Init(TJINIT_DECOMPRESS);
  if (!tj || tj3Set(tj, TJPARAM_STOPONWARNING, 1) || tj3Set(tj, TJPARAM_SCANLIMIT, 500) ||
      tj3DecompressHeader(tj, jpeg, len) || tj3SetScalingFactor(tj, sf))
    return 1;
  w = TJSCALED(tj3Get(tj, TJPARAM_JPEGWIDTH), sf);
  h = TJSCALED(tj3Get(tj, TJPARAM_JPEGHEIGHT), sf);
  rgb = malloc((size_t)w * h * 3);
  if (!rgb || tj3Decompress8(tj, jpeg, len, rgb, w * 3, TJPF_RGB)) return 1;
  printf("%dx%d\n", w, h);
  fwrite(rgb, 1, (size_t)w * h * 3, stdout);
  return 0;
}
