// Exercises targets/web_runtime_shims natively (tests/test_web_runtime_shims.py drives it).
// argv[1]: float32 values to narrow; writes argv[2]: the 65536 widened halves (float32), then
// the narrowed values (uint16); prints the serialized bytes and base64 text on stdout.
#include <builtin_fp16.h>
#include <tvm/support/cuda/nvtx.h>
#include <tvm/support/serializer.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

#include "src/support/arena.h"
#include "src/support/base64.h"
#include "src/support/bytes_io.h"
#include "src/support/ring_buffer.h"
#include "src/support/utils.h"

using namespace tvm;

static void Check(bool ok, const char* what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    std::exit(1);
  }
}

static std::string Hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) out += {digits[c >> 4], digits[c & 15]};
  return out;
}

int main(int argc, char** argv) {
  // fp16 conversions, checked against numpy by the test.
  std::ifstream in(argv[1], std::ios::binary);
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream out(argv[2], std::ios::binary);
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = __extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>(uint16_t(h));
    out.write(reinterpret_cast<const char*>(&f), 4);
  }
  for (size_t i = 0; i + 4 <= raw.size(); i += 4) {
    float f;
    std::memcpy(&f, raw.data() + i, 4);
    uint16_t h = __truncXfYf2__<float, uint32_t, 23, uint16_t, uint16_t, 10>(f);
    out.write(reinterpret_cast<const char*>(&h), 2);
  }

  // Serializer: bytes printed for the test to compare with the format, then read back.
  std::string bytes;
  support::BytesOutStream os(&bytes);
  std::vector<int64_t> ints{1, -2};
  std::unordered_map<std::string, std::string> smap{{"k", "vv"}};
  ffi::Array<ffi::String> names{"ab", ""};
  ffi::Map<ffi::String, ffi::Array<ffi::String>> fmap{{"f", {"x"}}};
  os.Write(std::string("abc"));
  os.Write(ints);
  os.Write(smap);
  os.Write(names);
  os.Write(fmap);
  os.Write(DLDataType{2, 32, 1});
  os.Write(DLDevice{kDLWebGPU, 3});
  os.Write(std::make_pair(int32_t(7), uint8_t(9)));
  std::cout << Hex(bytes) << "\n";

  support::BytesInStream is(bytes);
  std::string s;
  std::vector<int64_t> ints2;
  std::unordered_map<std::string, std::string> smap2;
  ffi::Array<ffi::String> names2;
  ffi::Map<ffi::String, ffi::Array<ffi::String>> fmap2;
  DLDataType dtype;
  DLDevice dev;
  std::pair<int32_t, uint8_t> pair;
  Check(is.Read(&s) && s == "abc", "string");
  Check(is.Read(&ints2) && ints2 == ints, "vector");
  Check(is.Read(&smap2) && smap2 == smap, "unordered_map");
  Check(is.Read(&names2) && names2.size() == 2 && names2[0] == "ab" && names2[1] == "", "Array");
  Check(is.Read(&fmap2) && fmap2.size() == 1 && fmap2.at("f")[0] == "x", "Map");
  Check(is.Read(&dtype) && dtype.code == 2 && dtype.bits == 32 && dtype.lanes == 1, "dtype");
  Check(is.Read(&dev) && dev.device_type == kDLWebGPU && dev.device_id == 3, "DLDevice");
  Check(is.Read(&pair) && pair.first == 7 && pair.second == 9, "pair");
  Check(!is.Read(&s), "reading past the end fails");

  // Base64: encode every length's padding case, decode back through whitespace.
  for (size_t n : {0, 1, 2, 3, 4, 256}) {
    std::string data, text;
    for (size_t i = 0; i < n; ++i) data += char((i * 37 + 11) & 255);
    support::BytesOutStream text_out(&text);
    support::Base64OutStream enc(&text_out);
    enc.Write(data.data(), data.size());
    enc.Finish();
    std::cout << text << "\n";
    std::string spaced = text.empty() ? text : text.substr(0, 2) + "\n " + text.substr(2);
    support::BytesInStream text_in(spaced);
    support::Base64InStream dec(&text_in);
    dec.InitPosition();
    std::string back(n, '\0');
    Check(dec.Read(&back[0], n) == n && back == data, "base64 round trip");
  }

  // Ring buffer: FIFO order across growth, partial reads and callbacks.
  support::RingBuffer ring;
  std::string sent;
  for (int i = 0; i < 100; ++i) {
    std::string chunk(i % 7 + 1, char('a' + i % 26));
    ring.Write(chunk.data(), chunk.size());
    sent += chunk;
    if (i % 3 == 0) {
      char first;
      ring.Read(&first, 1);
      Check(first == sent[0], "ring read order");
      sent.erase(0, 1);
    }
  }
  Check(ring.bytes_available() == sent.size(), "ring size");
  std::string drained;
  while (ring.bytes_available()) {
    ring.ReadWithCallback([&](const void* p, size_t n) {
      size_t take = n < 5 ? n : 5;
      drained.append(static_cast<const char*>(p), take);
      return take;
    }, ring.bytes_available());
  }
  Check(drained == sent, "ring callback drain");
  size_t got = ring.WriteWithCallback([](void* p, size_t n) {
    std::memset(p, 'z', n);
    return n - 1;
  }, 4);
  Check(got == 3 && ring.bytes_available() == 3, "ring callback fill");

  support::Arena arena;
  double* d = arena.allocate_<double>(3);
  Check(reinterpret_cast<uintptr_t>(d) % alignof(double) == 0, "arena alignment");
  d[2] = 1.5;
  arena.RecycleAll();
  support::NVTXScopedRange range("no-op");
  Check(support::StartsWith("RPCSessionTimeoutError: x", "RPCSessionTimeoutError: "), "prefix");
  Check(!support::StartsWith("ab", "abc") && support::EndsWith("abc", "bc"), "affixes");
  std::cout << "ok\n";
  return 0;
}
