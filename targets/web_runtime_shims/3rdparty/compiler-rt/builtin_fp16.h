/*!
 * \file 3rdparty/compiler-rt/builtin_fp16.h
 * \brief mlc shim: IEEE-754 binary format conversions between float widths, bit-exact,
 * rounding to nearest even. Template parameters: a type, its same-width unsigned
 * representation and its stored significand bits, for the source then the destination.
 */
#ifndef MLC_SHIM_BUILTIN_FP16_H_
#define MLC_SHIM_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>

namespace mlc_fp_shim {

template <typename Rep, int kSigBits>
struct Format {
  static constexpr int kBits = sizeof(Rep) * 8;
  static constexpr int kExpBits = kBits - kSigBits - 1;
  static constexpr int kExpMax = (1 << kExpBits) - 1;
  static constexpr int kBias = kExpMax >> 1;
  static constexpr uint64_t kSigMask = (uint64_t{1} << kSigBits) - 1;
};

template <typename T, typename Rep>
inline Rep ToBits(T value) {
  Rep bits;
  std::memcpy(&bits, &value, sizeof(Rep));
  return bits;
}

template <typename T, typename Rep>
inline T FromBits(uint64_t bits) {
  Rep narrow = static_cast<Rep>(bits);
  T value;
  std::memcpy(&value, &narrow, sizeof(Rep));
  return value;
}

/*! \brief `value >> shift`, rounded to nearest even on the bits shifted out. */
inline uint64_t ShiftRoundEven(uint64_t value, int shift) {
  if (shift <= 0) return value << -shift;
  if (shift >= 64) return 0;
  uint64_t kept = value >> shift;
  uint64_t rest = value & ((uint64_t{1} << shift) - 1);
  uint64_t half = uint64_t{1} << (shift - 1);
  if (rest > half || (rest == half && (kept & 1))) ++kept;
  return kept;
}

}  // namespace mlc_fp_shim

/*! \brief Narrow-to-wide conversion (exact). */
template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
inline DST_T __extendXfYf2__(SRC_T a) {
  using Src = mlc_fp_shim::Format<SRC_REP_T, SRC_SIG_BITS>;
  using Dst = mlc_fp_shim::Format<DST_REP_T, DST_SIG_BITS>;
  uint64_t bits = mlc_fp_shim::ToBits<SRC_T, SRC_REP_T>(a);
  uint64_t sign = (bits >> (Src::kBits - 1)) & 1;
  int exp = static_cast<int>((bits >> SRC_SIG_BITS) & Src::kExpMax);
  uint64_t sig = bits & Src::kSigMask;
  uint64_t out_exp, out_sig;
  if (exp == Src::kExpMax) {  // infinity or NaN
    out_exp = Dst::kExpMax;
    out_sig = sig << (DST_SIG_BITS - SRC_SIG_BITS);
  } else if (exp == 0 && sig == 0) {
    out_exp = 0;
    out_sig = 0;
  } else if (exp == 0) {  // subnormal: becomes normal in the wider format
    int top = 63 - __builtin_clzll(sig);
    out_exp = static_cast<uint64_t>(top - SRC_SIG_BITS + 1 - Src::kBias + Dst::kBias);
    out_sig = (sig & ~(uint64_t{1} << top)) << (DST_SIG_BITS - top);
  } else {
    out_exp = static_cast<uint64_t>(exp - Src::kBias + Dst::kBias);
    out_sig = sig << (DST_SIG_BITS - SRC_SIG_BITS);
  }
  uint64_t out = (sign << (Dst::kBits - 1)) | (out_exp << DST_SIG_BITS) | out_sig;
  return mlc_fp_shim::FromBits<DST_T, DST_REP_T>(out);
}

/*! \brief Wide-to-narrow conversion, rounding to nearest even; overflow gives infinity. */
template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
inline DST_T __truncXfYf2__(SRC_T a) {
  using Src = mlc_fp_shim::Format<SRC_REP_T, SRC_SIG_BITS>;
  using Dst = mlc_fp_shim::Format<DST_REP_T, DST_SIG_BITS>;
  uint64_t bits = mlc_fp_shim::ToBits<SRC_T, SRC_REP_T>(a);
  uint64_t sign = ((bits >> (Src::kBits - 1)) & 1) << (Dst::kBits - 1);
  int exp = static_cast<int>((bits >> SRC_SIG_BITS) & Src::kExpMax);
  uint64_t sig = bits & Src::kSigMask;
  const uint64_t inf = uint64_t{Dst::kExpMax} << DST_SIG_BITS;
  uint64_t out;
  if (exp == Src::kExpMax) {
    // NaN keeps its top payload bits and stays quiet; infinity stays infinity.
    out = sig ? inf | (uint64_t{1} << (DST_SIG_BITS - 1)) | (sig >> (SRC_SIG_BITS - DST_SIG_BITS))
              : inf;
  } else if (exp == 0) {
    out = 0;  // the source's subnormals are far below the narrow format's smallest value
  } else {
    int out_exp = exp - Src::kBias + Dst::kBias;
    uint64_t full = sig | (uint64_t{1} << SRC_SIG_BITS);
    if (out_exp >= Dst::kExpMax) {
      out = inf;
    } else if (out_exp >= 1) {
      // A carry out of the significand correctly bumps the exponent (up to infinity).
      out = (uint64_t(out_exp) << DST_SIG_BITS) +
            mlc_fp_shim::ShiftRoundEven(full, SRC_SIG_BITS - DST_SIG_BITS) -
            (uint64_t{1} << DST_SIG_BITS);
    } else {
      out = mlc_fp_shim::ShiftRoundEven(full, SRC_SIG_BITS - DST_SIG_BITS + 1 - out_exp);
    }
  }
  return mlc_fp_shim::FromBits<DST_T, DST_REP_T>(sign | out);
}

#endif  // MLC_SHIM_BUILTIN_FP16_H_
