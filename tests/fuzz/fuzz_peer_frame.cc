// SPDX-License-Identifier: MIT
// fuzz_peer_frame.cc - libFuzzer target: one frame from an authenticated
// peer, the bytes after its tag, through codec::decode_frame (what
// peer_net.cc does with every frame once the handshake is over).
//
// Beyond not crashing: a refusal gives a one-line reason; a BodyChunk has a
// transfer id; and whatever decodes encodes again to bytes that decode and
// encode to the same bytes, so the codec keeps what it accepted.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "codec/codec.h"
#include "fuzz_check.h"

using namespace porcupine;
using fuzz::check;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_protobuf();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  Envelope e;
  codec::BodyChunk chunk;
  bool is_chunk = false;
  std::string why;
  if (!codec::decode_frame(bytes, e, chunk, is_chunk, &why)) {
    check(fuzz::one_line(why), "a refused frame has a one-line reason");
    return 0;
  }
  if (is_chunk) {
    check(chunk.transfer != 0, "a chunk names its transfer");
    codec::BodyChunk out{chunk.transfer, chunk.data_owned, {}, chunk.last};
    Envelope unused;
    codec::BodyChunk again;
    bool again_chunk = false;
    check(codec::decode_frame(codec::encode_body_chunk(out), unused, again, again_chunk) && again_chunk &&
              again.transfer == chunk.transfer && again.data_owned == chunk.data_owned && again.last == chunk.last,
          "a chunk survives encoding");
    return 0;
  }
  std::string once;
  try {
    once = codec::encode_envelope(e);
  } catch (const std::invalid_argument&) {
    check(false, "a decoded frame can be encoded (no body in a file)");
  }
  Envelope back;
  bool back_chunk = true;
  check(codec::decode_frame(once, back, chunk, back_chunk, &why) && !back_chunk, "an encoded frame decodes");
  check(codec::encode_envelope(back) == once, "decode and encode again give the same bytes");
  return 0;
}
