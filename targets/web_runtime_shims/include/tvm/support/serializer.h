/*!
 * \file tvm/support/serializer.h
 * \brief mlc shim: Serializer<T> for the types TVM's runtime stores.
 *
 * Format (little-endian, as written by libtvm on x86/arm hosts and read on wasm32):
 * numbers and enums raw; strings and sequences as a uint64 count then the elements;
 * maps as a uint64 count then key, value pairs; DLDataType as u8 code, u8 bits, u16 lanes;
 * DLDevice as i32 type, i32 id. Every supported target is little-endian, so no byte swap.
 */
#ifndef TVM_SUPPORT_SERIALIZER_H_
#define TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tvm {
namespace support {

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const T& v) { s->Write(static_cast<const void*>(&v), sizeof(T)); }
  static bool Read(Stream* s, T* v) { return s->Read(static_cast<void*>(v), sizeof(T)) == sizeof(T); }
};

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_enum_v<T>>> {
  static constexpr bool enabled = true;
  using Raw = std::underlying_type_t<T>;
  static void Write(Stream* s, const T& v) { Serializer<Raw>::Write(s, static_cast<Raw>(v)); }
  static bool Read(Stream* s, T* v) {
    Raw raw;
    if (!Serializer<Raw>::Read(s, &raw)) return false;
    *v = static_cast<T>(raw);
    return true;
  }
};

namespace detail {
inline void WriteBytes(Stream* s, const char* data, size_t size) {
  Serializer<uint64_t>::Write(s, static_cast<uint64_t>(size));
  if (size) s->Write(static_cast<const void*>(data), size);
}
inline bool ReadBytes(Stream* s, std::string* out) {
  uint64_t size;
  if (!Serializer<uint64_t>::Read(s, &size)) return false;
  out->resize(static_cast<size_t>(size));
  return size == 0 || s->Read(static_cast<void*>(&(*out)[0]), out->size()) == out->size();
}
}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::string& v) { detail::WriteBytes(s, v.data(), v.size()); }
  static bool Read(Stream* s, std::string* v) { return detail::ReadBytes(s, v); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::String& v) { detail::WriteBytes(s, v.data(), v.size()); }
  static bool Read(Stream* s, ffi::String* v) {
    std::string raw;
    if (!detail::ReadBytes(s, &raw)) return false;
    *v = ffi::String(std::move(raw));
    return true;
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::vector<T>& v) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(v.size()));
    for (const T& item : v) Serializer<T>::Write(s, item);
  }
  static bool Read(Stream* s, std::vector<T>* v) {
    uint64_t size;
    if (!Serializer<uint64_t>::Read(s, &size)) return false;
    v->resize(static_cast<size_t>(size));
    for (T& item : *v) {
      if (!Serializer<T>::Read(s, &item)) return false;
    }
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::pair<A, B>& v) {
    Serializer<A>::Write(s, v.first);
    Serializer<B>::Write(s, v.second);
  }
  static bool Read(Stream* s, std::pair<A, B>* v) {
    return Serializer<A>::Read(s, &v->first) && Serializer<B>::Read(s, &v->second);
  }
};

template <typename K, typename V>
struct Serializer<std::unordered_map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::unordered_map<K, V>& v) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(v.size()));
    for (const auto& kv : v) {
      Serializer<K>::Write(s, kv.first);
      Serializer<V>::Write(s, kv.second);
    }
  }
  static bool Read(Stream* s, std::unordered_map<K, V>* v) {
    uint64_t size;
    if (!Serializer<uint64_t>::Read(s, &size)) return false;
    v->clear();
    for (uint64_t i = 0; i < size; ++i) {
      std::pair<K, V> kv;
      if (!Serializer<std::pair<K, V>>::Read(s, &kv)) return false;
      v->insert(std::move(kv));
    }
    return true;
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::Array<T>& v) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(v.size()));
    for (size_t i = 0; i < v.size(); ++i) Serializer<T>::Write(s, v[i]);
  }
  static bool Read(Stream* s, ffi::Array<T>* v) {
    uint64_t size;
    if (!Serializer<uint64_t>::Read(s, &size)) return false;
    ffi::Array<T> items;
    for (uint64_t i = 0; i < size; ++i) {
      T item;
      if (!Serializer<T>::Read(s, &item)) return false;
      items.push_back(std::move(item));
    }
    *v = std::move(items);
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::Map<K, V>& v) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(v.size()));
    for (const auto& kv : v) {
      Serializer<K>::Write(s, kv.first);
      Serializer<V>::Write(s, kv.second);
    }
  }
  static bool Read(Stream* s, ffi::Map<K, V>* v) {
    uint64_t size;
    if (!Serializer<uint64_t>::Read(s, &size)) return false;
    ffi::Map<K, V> items;
    for (uint64_t i = 0; i < size; ++i) {
      K key;
      V value;
      if (!Serializer<K>::Read(s, &key) || !Serializer<V>::Read(s, &value)) return false;
      items.Set(std::move(key), std::move(value));
    }
    *v = std::move(items);
    return true;
  }
};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const DLDataType& v) {
    Serializer<uint8_t>::Write(s, v.code);
    Serializer<uint8_t>::Write(s, v.bits);
    Serializer<uint16_t>::Write(s, v.lanes);
  }
  static bool Read(Stream* s, DLDataType* v) {
    return Serializer<uint8_t>::Read(s, &v->code) && Serializer<uint8_t>::Read(s, &v->bits) &&
           Serializer<uint16_t>::Read(s, &v->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const DLDevice& v) {
    Serializer<int32_t>::Write(s, static_cast<int32_t>(v.device_type));
    Serializer<int32_t>::Write(s, v.device_id);
  }
  static bool Read(Stream* s, DLDevice* v) {
    int32_t type;
    if (!Serializer<int32_t>::Read(s, &type)) return false;
    v->device_type = static_cast<DLDeviceType>(type);
    return Serializer<int32_t>::Read(s, &v->device_id);
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SERIALIZER_H_
