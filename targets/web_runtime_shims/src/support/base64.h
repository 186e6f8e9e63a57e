/*!
 * \file src/support/base64.h
 * \brief mlc shim: base64 (RFC 4648, with padding) encoding and decoding streams.
 */
#ifndef TVM_SUPPORT_BASE64_H_
#define TVM_SUPPORT_BASE64_H_

#include <tvm/support/io.h>

#include <cstdint>

namespace tvm {
namespace support {

namespace base64 {
inline const char* Alphabet() {
  return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}
/*! \return the 6-bit value of `c`, -1 for padding, -2 for any other byte. */
inline int Decode(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  if (c == '=') return -1;
  return -2;
}
}  // namespace base64

/*! \brief Encodes what is written into base64 text on `out`; call Finish() at the end. */
class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* out) : out_(out) {}

  size_t Read(void*, size_t) override { return 0; }
  size_t Write(const void* ptr, size_t size) override {
    const auto* bytes = static_cast<const uint8_t*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      group_[count_++] = bytes[i];
      if (count_ == 3) Flush();
    }
    return size;
  }
  /*! \brief Writes the last partial group with its padding. */
  void Finish() {
    if (count_) Flush();
  }

 private:
  void Flush() {
    const char* alphabet = base64::Alphabet();
    uint32_t bits = (uint32_t{group_[0]} << 16) | (uint32_t{count_ > 1 ? group_[1] : 0u} << 8) |
                    uint32_t{count_ > 2 ? group_[2] : 0u};
    char text[4];
    for (int i = 0; i < 4; ++i) text[i] = alphabet[(bits >> (18 - 6 * i)) & 63];
    if (count_ < 3) text[3] = '=';
    if (count_ < 2) text[2] = '=';
    out_->Write(static_cast<const void*>(text), 4);
    count_ = 0;
  }

  Stream* out_;
  uint8_t group_[3] = {0, 0, 0};
  int count_ = 0;
};

/*! \brief Decodes base64 text read from `in`, skipping whitespace. */
class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* in) : in_(in) {}

  /*! \brief Kept for API compatibility: decoding starts at the stream's current position. */
  void InitPosition() {}

  size_t Read(void* ptr, size_t size) override {
    auto* out = static_cast<uint8_t*>(ptr);
    size_t n = 0;
    while (n < size) {
      if (pos_ == avail_ && !Refill()) break;
      out[n++] = group_[pos_++];
    }
    return n;
  }
  size_t Write(const void*, size_t) override { return 0; }

 private:
  bool Refill() {
    int values[4];
    int got = 0;
    while (got < 4) {
      char c;
      if (in_->Read(static_cast<void*>(&c), 1) != 1) return false;
      int v = base64::Decode(c);
      if (v == -2) continue;  // whitespace, newlines
      values[got++] = v;
    }
    if (values[0] < 0 || values[1] < 0) return false;
    uint32_t bits = (uint32_t(values[0]) << 18) | (uint32_t(values[1]) << 12);
    avail_ = 1;
    if (values[2] >= 0) {
      bits |= uint32_t(values[2]) << 6;
      avail_ = 2;
      if (values[3] >= 0) {
        bits |= uint32_t(values[3]);
        avail_ = 3;
      }
    }
    for (int i = 0; i < 3; ++i) group_[i] = static_cast<uint8_t>(bits >> (16 - 8 * i));
    pos_ = 0;
    return true;
  }

  Stream* in_;
  uint8_t group_[3] = {0, 0, 0};
  int avail_ = 0;
  int pos_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BASE64_H_
