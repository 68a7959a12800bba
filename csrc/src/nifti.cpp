// NIfTI-1 volumes: read (single-file .nii / .nii.gz, either byte order) into LPS voxel order the way Python's
// runtime.volumes.read_nifti does with nibabel, and label maps written back in the file's own voxel order.
//
// The affine is nibabel's choice (sform when sform_code > 0, else qform, else the centred base affine); the
// reorientation is nibabel's io_orientation: the orthogonal polar factor of the affine's unit columns, each voxel
// axis assigned in turn to the world axis it is most aligned with. .nii.gz goes through zlib (MEDFM_HAVE_ZLIB).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "files.hpp"
#include "medfm/runtime.hpp"

#ifdef MEDFM_HAVE_ZLIB
#include <zlib.h>
#endif

namespace medfm {

bool has_gzip_support() {
#ifdef MEDFM_HAVE_ZLIB
  return true;
#else
  return false;
#endif
}

namespace {

constexpr size_t kHeaderSize = 348;

using Mat3 = std::array<std::array<double, 3>, 3>;

std::vector<unsigned char> read_maybe_gzip(const std::string& path) {
  const bool gz = detail::ends_with_nocase(path, ".gz");
#ifdef MEDFM_HAVE_ZLIB
  if (gz) {
    gzFile f = gzopen(path.c_str(), "rb");
    if (f == nullptr) throw Error("cannot read volume " + path + ": no such file or not readable");
    std::vector<unsigned char> data;
    std::vector<unsigned char> chunk(1 << 20);
    while (true) {
      const int n = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()));
      if (n < 0) {
        int errnum = 0;
        const std::string why = gzerror(f, &errnum);
        gzclose(f);
        throw Error("volume " + path + " is not a readable gzip file (" + why + ")");
      }
      if (n == 0) break;
      data.insert(data.end(), chunk.begin(), chunk.begin() + n);
    }
    gzclose(f);
    return data;
  }
#else
  if (gz) {
    throw Error("cannot read " + path + ": this build has no gzip support (install zlib1g-dev and rebuild, or "
                "gunzip it to .nii)");
  }
#endif
  return detail::read_file(path, "volume");
}

struct Reader {
  const std::vector<unsigned char>& data;
  bool swap;
  template <typename T>
  T at(size_t offset) const {
    T v;
    unsigned char b[sizeof(T)];
    std::memcpy(b, data.data() + offset, sizeof(T));
    if (swap) std::reverse(b, b + sizeof(T));
    std::memcpy(&v, b, sizeof(T));
    return v;
  }
};

double determinant(const Mat3& m) {
  return m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
         m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
}

Mat3 inverse(const Mat3& m) {
  const double det = determinant(m);
  Mat3 r{};
  r[0][0] = (m[1][1] * m[2][2] - m[1][2] * m[2][1]) / det;
  r[0][1] = (m[0][2] * m[2][1] - m[0][1] * m[2][2]) / det;
  r[0][2] = (m[0][1] * m[1][2] - m[0][2] * m[1][1]) / det;
  r[1][0] = (m[1][2] * m[2][0] - m[1][0] * m[2][2]) / det;
  r[1][1] = (m[0][0] * m[2][2] - m[0][2] * m[2][0]) / det;
  r[1][2] = (m[0][2] * m[1][0] - m[0][0] * m[1][2]) / det;
  r[2][0] = (m[1][0] * m[2][1] - m[1][1] * m[2][0]) / det;
  r[2][1] = (m[0][1] * m[2][0] - m[0][0] * m[2][1]) / det;
  r[2][2] = (m[0][0] * m[1][1] - m[0][1] * m[1][0]) / det;
  return r;
}

// The orthogonal factor of the polar decomposition (what nibabel gets from the SVD, P @ Qs), by Newton's
// iteration X <- (X + X^-T) / 2, which converges quadratically for a non-singular matrix.
Mat3 polar_orthogonal(Mat3 x) {
  for (int it = 0; it < 100; ++it) {
    const Mat3 inv = inverse(x);
    double change = 0.0;
    Mat3 next{};
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) {
        next[i][j] = 0.5 * (x[i][j] + inv[j][i]);
        change = std::max(change, std::fabs(next[i][j] - x[i][j]));
      }
    }
    x = next;
    if (change < 1e-15) break;
  }
  return x;
}

// nibabel.orientations.io_orientation for a 3-D affine: per voxel axis, the world axis and direction (+1/-1).
void io_orientation(const std::array<double, 16>& affine, std::array<int, 3>& world_axis, std::array<int, 3>& sign) {
  Mat3 rs{};
  for (int j = 0; j < 3; ++j) {
    double norm = 0.0;
    for (int i = 0; i < 3; ++i) norm += affine[static_cast<size_t>(i * 4 + j)] * affine[static_cast<size_t>(i * 4 + j)];
    norm = std::sqrt(norm);
    if (norm == 0.0) norm = 1.0;
    for (int i = 0; i < 3; ++i) rs[i][j] = affine[static_cast<size_t>(i * 4 + j)] / norm;
  }
  Mat3 r = polar_orthogonal(rs);
  for (int in_ax = 0; in_ax < 3; ++in_ax) {
    int best = 0;
    for (int i = 1; i < 3; ++i) {
      if (std::fabs(r[i][in_ax]) > std::fabs(r[best][in_ax])) best = i;
    }
    world_axis[static_cast<size_t>(in_ax)] = best;
    sign[static_cast<size_t>(in_ax)] = r[best][in_ax] < 0 ? -1 : 1;
    for (int j = 0; j < 3; ++j) r[best][j] = 0.0;
  }
}

// nibabel's Nifti1Header.get_best_affine().
std::array<double, 16> best_affine(const Reader& h, const std::array<int64_t, 3>& shape, const std::string& path) {
  std::array<double, 16> a{};
  a[15] = 1.0;
  const int16_t sform_code = h.at<int16_t>(254), qform_code = h.at<int16_t>(252);
  if (sform_code != 0) {
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 4; ++j) a[static_cast<size_t>(i * 4 + j)] = h.at<float>(280 + static_cast<size_t>(16 * i + 4 * j));
    }
    return a;
  }
  double zoom[3];
  for (int k = 0; k < 3; ++k) zoom[k] = h.at<float>(80 + 4 * static_cast<size_t>(k));
  if (qform_code != 0) {
    const double b = h.at<float>(256), c = h.at<float>(260), d = h.at<float>(264);
    double w2 = 1.0 - (b * b + c * c + d * d);
    if (w2 < -3.0 * 1.1920928955078125e-07) throw Error(path + ": its qform quaternion is not a rotation; fix the header");
    const double w = w2 < 0.0 ? 0.0 : std::sqrt(w2);
    const double nq = w * w + b * b + c * c + d * d;
    Mat3 rot = {{{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}};
    if (nq >= 2.220446049250313e-16) {
      const double s = 2.0 / nq;
      const double X = b * s, Y = c * s, Z = d * s;
      const double wX = w * X, wY = w * Y, wZ = w * Z, xX = b * X, xY = b * Y, xZ = b * Z, yY = c * Y, yZ = c * Z,
                   zZ = d * Z;
      rot = {{{1.0 - (yY + zZ), xY - wZ, xZ + wY}, {xY + wZ, 1.0 - (xX + zZ), yZ - wX}, {xZ - wY, yZ + wX, 1.0 - (xX + yY)}}};
    }
    for (double z : zoom) {
      if (z < 0) throw Error(path + ": pixdim[1..3] are negative; fix the header");
    }
    const double qfac = h.at<float>(76) == -1.0f ? -1.0 : 1.0;
    const double vox[3] = {zoom[0], zoom[1], zoom[2] * qfac};
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) a[static_cast<size_t>(i * 4 + j)] = rot[i][j] * vox[j];
    }
    a[3] = h.at<float>(268);
    a[7] = h.at<float>(272);
    a[11] = h.at<float>(276);
    return a;
  }
  // Neither form: centred on the volume, x flipped (Analyze's convention).
  const double z[3] = {-zoom[0], zoom[1], zoom[2]};
  for (int i = 0; i < 3; ++i) {
    a[static_cast<size_t>(i * 5)] = z[i];
    a[static_cast<size_t>(i * 4 + 3)] = -(static_cast<double>(shape[static_cast<size_t>(i)]) - 1.0) / 2.0 * z[i];
  }
  return a;
}

template <typename T>
void scale_into(const unsigned char* src, bool swap, size_t count, double slope, double inter, bool scaled,
                std::vector<float>& out) {
  out.resize(count);
  for (size_t i = 0; i < count; ++i) {
    unsigned char b[sizeof(T)];
    std::memcpy(b, src + i * sizeof(T), sizeof(T));
    if (swap) std::reverse(b, b + sizeof(T));
    T v;
    std::memcpy(&v, b, sizeof(T));
    out[i] = scaled ? static_cast<float>(static_cast<double>(v) * slope + inter) : static_cast<float>(v);
  }
}

}  // namespace

namespace detail {

Volume read_nifti(const std::string& path) {
  const std::vector<unsigned char> data = read_maybe_gzip(path);
  auto bad = [&](const std::string& why) { return Error(path + " is not a readable NIfTI file (" + why + ")"); };
  if (data.size() < kHeaderSize) throw bad("shorter than a NIfTI-1 header");
  int32_t sizeof_hdr;
  std::memcpy(&sizeof_hdr, data.data(), 4);
  bool swap = false;
  if (sizeof_hdr != 348) {
    int32_t swapped = static_cast<int32_t>(__builtin_bswap32(static_cast<uint32_t>(sizeof_hdr)));
    if (swapped == 348) {
      swap = true;
    } else if (sizeof_hdr == 540 || swapped == 540) {
      throw Error(path + " is a NIfTI-2 file; this runtime reads NIfTI-1 (save it with nibabel's Nifti1Image)");
    } else {
      throw bad("no NIfTI-1 header size");
    }
  }
  const Reader h{data, swap};
  if (std::memcmp(data.data() + 344, "n+1\0", 4) != 0) {
    if (std::memcmp(data.data() + 344, "ni1\0", 4) == 0) {
      throw Error(path + " is a .hdr/.img pair header; save the volume as one .nii or .nii.gz file");
    }
    throw bad("no 'n+1' magic");
  }
  const int16_t ndim = h.at<int16_t>(40);
  std::array<int64_t, 8> dim{};
  for (int k = 0; k < 8; ++k) dim[static_cast<size_t>(k)] = h.at<int16_t>(40 + 2 * static_cast<size_t>(k));
  if (ndim < 1 || ndim > 7) throw bad("dim[0] = " + std::to_string(ndim));
  if (!(ndim == 3 || (ndim == 4 && dim[4] == 1))) {
    std::string shape;
    for (int k = 1; k <= ndim; ++k) shape += (k > 1 ? ", " : "") + std::to_string(dim[static_cast<size_t>(k)]);
    throw Error(path + ": expected a 3-D volume, got shape (" + shape + ") (one channel, one time point)");
  }
  const std::array<int64_t, 3> shape{dim[1], dim[2], dim[3]};
  for (int64_t n : shape) {
    if (n < 1) throw bad("a dimension is " + std::to_string(n));
  }
  if (shape[0] * shape[1] * shape[2] > (int64_t{1} << 31)) throw Error(path + " is implausibly large; is it corrupt?");
  const int16_t datatype = h.at<int16_t>(70);
  const double vox_offset = h.at<float>(108);
  float slope = h.at<float>(112), inter = h.at<float>(116);
  // nibabel: a zero or non-finite slope means no scaling.
  const bool scaled = slope != 0.0f && std::isfinite(slope) && !(slope == 1.0f && inter == 0.0f);
  if (scaled && !std::isfinite(inter)) throw bad("scl_inter is not finite");
  const size_t count = static_cast<size_t>(shape[0] * shape[1] * shape[2]);
  size_t item = 0;
  switch (datatype) {
    case 2: case 256: item = 1; break;
    case 4: case 512: item = 2; break;
    case 8: case 16: case 768: item = 4; break;
    case 64: item = 8; break;
    default:
      throw Error(path + ": NIfTI datatype " + std::to_string(datatype) +
                  " is not read (use uint8/int8, int16/uint16, int32/uint32, float32 or float64)");
  }
  if (!(vox_offset >= 0.0) || static_cast<size_t>(vox_offset) < kHeaderSize) throw bad("vox_offset < 348");
  const size_t begin = static_cast<size_t>(vox_offset);
  if (data.size() < begin || data.size() - begin < count * item) throw bad("voxel data truncated");
  const unsigned char* src = data.data() + begin;
  std::vector<float> raw;  // the file's (i, j, k) array, i fastest
  const double s = slope, b = inter;
  switch (datatype) {
    case 2: scale_into<uint8_t>(src, swap, count, s, b, scaled, raw); break;
    case 256: scale_into<int8_t>(src, swap, count, s, b, scaled, raw); break;
    case 4: scale_into<int16_t>(src, swap, count, s, b, scaled, raw); break;
    case 512: scale_into<uint16_t>(src, swap, count, s, b, scaled, raw); break;
    case 8: scale_into<int32_t>(src, swap, count, s, b, scaled, raw); break;
    case 768: scale_into<uint32_t>(src, swap, count, s, b, scaled, raw); break;
    case 16: scale_into<float>(src, swap, count, s, b, scaled, raw); break;
    default: scale_into<double>(src, swap, count, s, b, scaled, raw); break;
  }
  Volume v;
  v.source = "nifti:" + path;
  v.from_nifti = true;
  v.source_shape = shape;
  v.source_affine = best_affine(h, shape, path);
  for (double x : v.source_affine) {
    if (!std::isfinite(x)) throw Error(path + ": its affine is not a finite invertible matrix; fix the header (qform/sform)");
  }
  Mat3 m{};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) m[i][j] = v.source_affine[static_cast<size_t>(i * 4 + j)];
  }
  if (std::fabs(determinant(m)) < 1e-12) throw Error(path + ": its affine is not a finite invertible matrix; fix the header (qform/sform)");
  std::array<int, 3> world{}, sign{};
  io_orientation(v.source_affine, world, sign);
  // LPS: world axis 0 (R) and 1 (A) are wanted reversed, axis 2 (S) as it is.
  for (int in_ax = 0; in_ax < 3; ++in_ax) {
    const int a = world[static_cast<size_t>(in_ax)];
    v.source_axis[static_cast<size_t>(a)] = in_ax;
    v.source_flip[static_cast<size_t>(a)] = (a < 2) ? sign[static_cast<size_t>(in_ax)] > 0 : sign[static_cast<size_t>(in_ax)] < 0;
  }
  for (int a = 0; a < 3; ++a) v.shape[static_cast<size_t>(a)] = shape[static_cast<size_t>(v.source_axis[static_cast<size_t>(a)])];
  v.affine = {};
  v.affine[15] = 1.0;
  for (int i = 0; i < 3; ++i) v.affine[static_cast<size_t>(i * 4 + 3)] = v.source_affine[static_cast<size_t>(i * 4 + 3)];
  for (int a = 0; a < 3; ++a) {
    const int src_ax = v.source_axis[static_cast<size_t>(a)];
    const bool flip = v.source_flip[static_cast<size_t>(a)];
    for (int i = 0; i < 3; ++i) {
      const double col = v.source_affine[static_cast<size_t>(i * 4 + src_ax)];
      v.affine[static_cast<size_t>(i * 4 + a)] = flip ? -col : col;
      if (flip) v.affine[static_cast<size_t>(i * 4 + 3)] += col * static_cast<double>(shape[static_cast<size_t>(src_ax)] - 1);
    }
    double norm = 0.0;
    for (int i = 0; i < 3; ++i) norm += v.affine[static_cast<size_t>(i * 4 + a)] * v.affine[static_cast<size_t>(i * 4 + a)];
    v.spacing[static_cast<size_t>(a)] = std::sqrt(norm);
  }
  // Gather: LPS voxel (x, y, z), z fastest, from the file's voxel with i fastest.
  v.data.resize(count);
  const int64_t stride[3] = {1, shape[0], shape[0] * shape[1]};
  int64_t step[3], base = 0;
  for (int a = 0; a < 3; ++a) {
    const int src_ax = v.source_axis[static_cast<size_t>(a)];
    step[a] = v.source_flip[static_cast<size_t>(a)] ? -stride[src_ax] : stride[src_ax];
    if (v.source_flip[static_cast<size_t>(a)]) base += stride[src_ax] * (shape[static_cast<size_t>(src_ax)] - 1);
  }
  size_t o = 0;
  for (int64_t x = 0; x < v.shape[0]; ++x) {
    for (int64_t y = 0; y < v.shape[1]; ++y) {
      int64_t p = base + x * step[0] + y * step[1];
      for (int64_t z = 0; z < v.shape[2]; ++z, p += step[2]) v.data[o++] = raw[static_cast<size_t>(p)];
    }
  }
  return v;
}

void write_nifti_labels(const std::string& path, const std::vector<uint16_t>& labels,
                        const std::array<int64_t, 3>& shape, const std::array<double, 16>& affine,
                        const std::vector<std::string>& label_names) {
  // `labels` is C-ordered (i, j, k) with k fastest; NIfTI stores i fastest.
  const size_t count = static_cast<size_t>(shape[0] * shape[1] * shape[2]);
  if (labels.size() != count) throw Error("cannot write mask " + path + ": it does not match the volume's grid");
  for (int64_t n : shape) {
    if (n < 1 || n > 32767) {
      throw Error("cannot write mask " + path + ": NIfTI-1 holds at most 32767 voxels per axis, got " +
                  std::to_string(n) + " (write a .npy mask)");
    }
  }
  bool wide = false;
  for (uint16_t v : labels) wide = wide || v > 255;
  std::string hdr(kHeaderSize + 4, '\0');
  auto put = [&](size_t offset, auto value) { std::memcpy(&hdr[offset], &value, sizeof(value)); };
  put(0, int32_t{348});
  const int16_t dim[8] = {3, static_cast<int16_t>(shape[0]), static_cast<int16_t>(shape[1]),
                          static_cast<int16_t>(shape[2]), 1, 1, 1, 1};
  for (int k = 0; k < 8; ++k) put(40 + 2 * static_cast<size_t>(k), dim[k]);
  put(68, int16_t{1002});  // intent: NIFTI_INTENT_LABEL
  put(70, static_cast<int16_t>(wide ? 512 : 2));
  put(72, static_cast<int16_t>(wide ? 16 : 8));
  float pixdim[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  for (int j = 0; j < 3; ++j) {
    double norm = 0.0;
    for (int i = 0; i < 3; ++i) norm += affine[static_cast<size_t>(i * 4 + j)] * affine[static_cast<size_t>(i * 4 + j)];
    pixdim[j + 1] = static_cast<float>(std::sqrt(norm));
  }
  for (int k = 0; k < 8; ++k) put(76 + 4 * static_cast<size_t>(k), pixdim[k]);
  put(108, 352.0f);  // vox_offset: header + 4 bytes of (no) extensions
  put(112, 1.0f);
  put(116, 0.0f);
  hdr[123] = 2;  // xyzt_units: mm
  std::string descrip;
  for (size_t i = 0; i < label_names.size(); ++i) descrip += (i ? ";" : "") + label_names[i];
  std::memcpy(&hdr[148], descrip.data(), std::min<size_t>(descrip.size(), 79));
  put(252, int16_t{0});  // qform_code: unknown (the sform carries the geometry, as nibabel writes it)
  put(254, int16_t{2});  // sform_code: aligned
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 4; ++j) put(280 + static_cast<size_t>(16 * i + 4 * j), static_cast<float>(affine[static_cast<size_t>(i * 4 + j)]));
  }
  std::memcpy(&hdr[344], "n+1\0", 4);
  std::string body(count * (wide ? 2 : 1), '\0');
  size_t o = 0;
  for (int64_t k = 0; k < shape[2]; ++k) {
    for (int64_t j = 0; j < shape[1]; ++j) {
      for (int64_t i = 0; i < shape[0]; ++i) {
        const uint16_t v = labels[static_cast<size_t>((i * shape[1] + j) * shape[2] + k)];
        if (wide) {
          std::memcpy(&body[o], &v, 2);
          o += 2;
        } else {
          body[o++] = static_cast<char>(v);
        }
      }
    }
  }
  const bool gz = ends_with_nocase(path, ".gz");
  if (!gz) {
    write_file_atomic(path, hdr + body, "mask");
    return;
  }
#ifdef MEDFM_HAVE_ZLIB
  const std::string tmp = path + ".tmp";
  gzFile f = gzopen(tmp.c_str(), "wb6");
  if (f == nullptr) throw Error("cannot write mask " + path + ": its folder is missing or not writable");
  const std::string all = hdr + body;
  size_t done = 0;
  bool ok = true;
  while (ok && done < all.size()) {
    const unsigned n = static_cast<unsigned>(std::min<size_t>(all.size() - done, 1u << 30));
    ok = gzwrite(f, all.data() + done, n) == static_cast<int>(n);
    done += n;
  }
  ok = gzclose(f) == Z_OK && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error("cannot write mask " + path + ": write failed (disk full?)");
  }
#else
  throw Error("cannot write " + path + ": this build has no gzip support (install zlib1g-dev and rebuild, or "
              "name a .nii or .npy mask)");
#endif
}

}  // namespace detail

}  // namespace medfm
