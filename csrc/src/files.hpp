// Internal helpers shared by the readers and writers of medfm_runtime (not installed): whole-file reads, atomic
// writes, file extensions, and the NumPy .npy header (format 1.x-3.x read, 1.0 written).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "medfm/runtime.hpp"

namespace medfm::detail {

/// The lower-cased text after the last '.' of the file name ("" when there is none).
std::string lower_extension(const std::string& path);
/// True when `path` ends with `suffix`, ignoring case.
bool ends_with_nocase(const std::string& path, const std::string& suffix);

/// The whole file; `what` names it in the error ("image", "volume", ...).
std::vector<unsigned char> read_file(const std::string& path, const std::string& what);

/// Writes `bytes` to `path` through a temporary file renamed into place; `what` names it in errors.
void write_file_atomic(const std::string& path, const std::string& bytes, const std::string& what);

struct NpyHeader {
  std::string descr;            ///< numpy dtype string, e.g. "<f4", "|u1"
  std::vector<int64_t> shape;
  size_t data_offset = 0;       ///< where the array's bytes start
  size_t count() const;         ///< the number of elements (product of shape)
};

/// Parses a C-ordered .npy header; `bad(why)` builds the error thrown for a malformed file.
NpyHeader parse_npy(const std::vector<unsigned char>& data, const std::function<Error(const std::string&)>& bad);

/// The bytes of a version 1.0 .npy header for a C-ordered array (padded to a multiple of 64).
std::string npy_header(const std::string& descr, const std::vector<int64_t>& shape);

/// nifti.cpp: a NIfTI-1 file read into a Volume in LPS order (see read_volume).
Volume read_nifti(const std::string& path);
/// nifti.cpp: a C-ordered (i, j, k) label map written as NIfTI-1 with `affine` (sform, code aligned), atomically.
void write_nifti_labels(const std::string& path, const std::vector<uint16_t>& labels,
                        const std::array<int64_t, 3>& shape, const std::array<double, 16>& affine,
                        const std::vector<std::string>& label_names);

}  // namespace medfm::detail
