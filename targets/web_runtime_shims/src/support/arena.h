/*!
 * \file src/support/arena.h
 * \brief mlc shim: scratch allocations freed all at once.
 */
#ifndef TVM_SUPPORT_ARENA_H_
#define TVM_SUPPORT_ARENA_H_

#include <cstddef>
#include <memory>
#include <vector>

namespace tvm {
namespace support {

class Arena {
 public:
  /*! \return uninitialised room for `count` trivial objects of type T, valid until RecycleAll. */
  template <typename T>
  T* allocate_(size_t count = 1) {
    blocks_.emplace_back(new std::max_align_t[(sizeof(T) * count + sizeof(std::max_align_t) - 1) /
                                                  sizeof(std::max_align_t) +
                                              1]);
    return reinterpret_cast<T*>(blocks_.back().get());
  }
  void RecycleAll() { blocks_.clear(); }

 private:
  std::vector<std::unique_ptr<std::max_align_t[]>> blocks_;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_ARENA_H_
