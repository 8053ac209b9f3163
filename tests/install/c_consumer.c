/* Compiled with `cc $(pkg-config --cflags --libs sigattn)` against an installed sigattn: the C ABI
 * needs nothing but a C compiler. Checks the version against the installed header and that a
 * forward call on host memory fails cleanly with a message: SIGATTN_NOT_AVAILABLE or
 * SIGATTN_DRIVER_ERROR without a driver, SIGATTN_INVALID_ARGUMENT where a driver is present. */
#include <sigattn/sigattn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
  const int seq = 16, heads = 2, head_dim = 64;
  const size_t bytes = (size_t)seq * heads * head_dim * 2;
  sigattn_forward_args args;
  sigattn_tensor bthd = {NULL, (int64_t)seq * heads * head_dim, (int64_t)heads * head_dim,
                         head_dim};
  sigattn_status status;
  const char* message;
  void* buffers[4];
  int i;

  printf("sigattn %s\n", sigattn_version());
  if (strcmp(sigattn_version(), SIGATTN_VERSION_STRING) != 0) {
    fprintf(stderr, "library version %s, header version %s\n", sigattn_version(),
            SIGATTN_VERSION_STRING);
    return 1;
  }

  for (i = 0; i < 4; ++i) buffers[i] = calloc(1, bytes);
  sigattn_forward_args_init(&args);
  args.dtype = SIGATTN_FP16;
  args.batch = 1;
  args.heads_q = heads;
  args.heads_kv = heads;
  args.head_dim = head_dim;
  args.max_seqlen_q = seq;
  args.max_seqlen_k = seq;
  args.q = bthd;
  args.q.data = buffers[0];
  args.k = bthd;
  args.k.data = buffers[1];
  args.v = bthd;
  args.v.data = buffers[2];
  args.out = bthd;
  args.out.data = buffers[3];
  status = sigattn_forward(&args, NULL);
  message = sigattn_last_error();
  for (i = 0; i < 4; ++i) free(buffers[i]);

  printf("forward: status %d: %s\n", (int)status, message);
  if (status == SIGATTN_OK) {
    fprintf(stderr, "forward on host memory did not fail\n");
    return 1;
  }
  if (message[0] == '\0') {
    fprintf(stderr, "status %d without a message\n", (int)status);
    return 1;
  }
  if (status == SIGATTN_NOT_AVAILABLE || status == SIGATTN_DRIVER_ERROR) return 0;
  return status == SIGATTN_INVALID_ARGUMENT && strstr(message, "not a device pointer") != NULL ? 0
                                                                                               : 1;
}
