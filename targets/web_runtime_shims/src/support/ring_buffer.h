/*!
 * \file src/support/ring_buffer.h
 * \brief mlc shim: a growable FIFO byte queue (the RPC endpoint's read and write buffers).
 */
#ifndef TVM_SUPPORT_RING_BUFFER_H_
#define TVM_SUPPORT_RING_BUFFER_H_

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  /*! \return the bytes queued and not yet read. */
  size_t bytes_available() const { return tail_ - head_; }

  /*! \brief Makes room for `n` queued bytes in total without reallocating later. */
  void Reserve(size_t n) {
    Compact();
    if (data_.size() < n) data_.resize(n);
  }

  /*! \brief Dequeues `size` bytes into `out`; the caller checked bytes_available(). */
  void Read(void* out, size_t size) {
    size_t n = std::min(size, bytes_available());
    std::memcpy(out, data_.data() + head_, n);
    head_ += n;
  }

  void Write(const void* data, size_t size) {
    Grow(size);
    std::memcpy(data_.data() + tail_, data, size);
    tail_ += size;
  }

  /*! \brief Hands up to `max_bytes` queued bytes to `send(ptr, n) -> sent`; dequeues those sent. */
  template <typename F>
  size_t ReadWithCallback(F send, size_t max_bytes) {
    size_t n = send(static_cast<const void*>(data_.data() + head_),
                    std::min(max_bytes, bytes_available()));
    head_ += n;
    return n;
  }

  /*! \brief Lets `recv(ptr, room) -> received` fill up to `max_bytes`; queues those received. */
  template <typename F>
  size_t WriteWithCallback(F recv, size_t max_bytes) {
    Grow(max_bytes);
    size_t n = recv(static_cast<void*>(data_.data() + tail_), max_bytes);
    tail_ += n;
    return n;
  }

 private:
  void Compact() {
    if (head_ == 0) return;
    std::memmove(data_.data(), data_.data() + head_, bytes_available());
    tail_ -= head_;
    head_ = 0;
  }
  void Grow(size_t extra) {
    Compact();
    if (data_.size() < tail_ + extra) data_.resize(std::max(tail_ + extra, 2 * data_.size()));
  }

  std::vector<char> data_;
  size_t head_ = 0;
  size_t tail_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_RING_BUFFER_H_
