/* SPDX-License-Identifier: MIT */
/* c_header_check.c - porcupine_client.h compiles as C (C11), and a C
 * caller can use it. Called from c_api_test.cc. */
#include "client/porcupine_client.h"

#include <string.h>

struct reader { const char* data; size_t off, len; };

static ssize_t read_chunk(void* context, char* buf, size_t len) {
  struct reader* r = (struct reader*)context;
  size_t n = r->len - r->off < len ? r->len - r->off : len;
  memcpy(buf, r->data + r->off, n);
  r->off += n;
  return (ssize_t)n;
}

/* Delivers `message` to `user` through the C ABI; returns the code. */
int c_deliver(porcupine_client* c, const char* user, const char* message, uint32_t* uid) {
  struct reader r = {message, 0, strlen(message)};
  struct porcupine_delivered d;
  int code = porcupine_deliver(c, user, "INBOX", read_chunk, &r, &d);
  if (code == PORCUPINE_OK) *uid = d.uid;
  return code;
}
