// Image file readers: binary PGM/PPM and NumPy .npy written here (no third-party code), PNG through the
// system libpng when the build found it (MEDFM_HAVE_PNG).
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "files.hpp"
#include "medfm/runtime.hpp"

#ifdef MEDFM_HAVE_PNG
#include <png.h>
#endif

namespace medfm {

namespace {

using detail::lower_extension;

std::vector<unsigned char> read_file(const std::string& path) { return detail::read_file(path, "image"); }

void check_size(const std::string& path, int64_t h, int64_t w, int64_t c) {
  if (h <= 0 || w <= 0) throw Error("image " + path + " has no pixels (" + std::to_string(h) + "x" + std::to_string(w) + ")");
  if (c != 1 && c != 3) throw Error("image " + path + " has " + std::to_string(c) + " channels; use 1 (gray) or 3 (RGB)");
  // 1 GiPixel is far beyond any radiograph; refuse before allocating on a corrupt header.
  if (h > 65536 || w > 65536 || h * w * c > (int64_t{1} << 30)) {
    throw Error("image " + path + " is implausibly large (" + std::to_string(h) + "x" + std::to_string(w) + "); is the file corrupt?");
  }
}

// --- PGM / PPM (P5 gray, P6 RGB; maxval <= 255 -> uint8, else 16-bit big-endian -> uint16) ---------------
Image read_pnm(const std::string& path, const std::vector<unsigned char>& data) {
  size_t pos = 0;
  auto bad = [&](const std::string& why) { return Error("image " + path + " is not a valid binary PGM/PPM: " + why); };
  auto next_token = [&]() -> std::string {
    while (pos < data.size()) {
      if (data[pos] == '#') {
        while (pos < data.size() && data[pos] != '\n') ++pos;
      } else if (std::isspace(data[pos])) {
        ++pos;
      } else {
        break;
      }
    }
    std::string tok;
    while (pos < data.size() && !std::isspace(data[pos]) && data[pos] != '#') tok += static_cast<char>(data[pos++]);
    if (tok.empty()) throw bad("truncated header");
    return tok;
  };
  auto number = [&](const char* what) -> int64_t {
    std::string tok = next_token();
    if (tok.size() > 9 || !std::all_of(tok.begin(), tok.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); })) {
      throw bad(std::string("bad ") + what + " '" + tok + "'");
    }
    return std::stoll(tok);
  };
  const std::string magic = next_token();
  if (magic != "P5" && magic != "P6") throw bad("magic '" + magic + "' (only binary P5/P6 are read)");
  const int64_t w = number("width"), h = number("height"), maxval = number("maxval");
  if (maxval < 1 || maxval > 65535) throw bad("maxval " + std::to_string(maxval) + " outside 1..65535");
  if (pos >= data.size() || !std::isspace(data[pos])) throw bad("no whitespace after the header");
  ++pos;  // exactly one whitespace byte separates the header from the pixels
  const int64_t c = magic == "P5" ? 1 : 3;
  check_size(path, h, w, c);
  const int64_t bytes_per = maxval > 255 ? 2 : 1;
  const size_t need = static_cast<size_t>(h * w * c * bytes_per);
  if (data.size() - pos < need) {
    throw bad("pixel data truncated (" + std::to_string(data.size() - pos) + " of " + std::to_string(need) + " bytes)");
  }
  Image img;
  img.height = static_cast<int>(h);
  img.width = static_cast<int>(w);
  img.channels = static_cast<int>(c);
  if (bytes_per == 1) {
    img.type = PixelType::U8;
    img.bytes.assign(data.begin() + static_cast<std::ptrdiff_t>(pos), data.begin() + static_cast<std::ptrdiff_t>(pos + need));
  } else {
    img.type = PixelType::U16;
    img.bytes.resize(need);
    auto* out = reinterpret_cast<uint16_t*>(img.bytes.data());
    for (size_t i = 0; i < need / 2; ++i) {
      out[i] = static_cast<uint16_t>((data[pos + 2 * i] << 8) | data[pos + 2 * i + 1]);
    }
  }
  return img;
}

// --- NumPy .npy (format 1.x/2.x/3.x, C order, little-endian u1/u2/f4/f8) -----------------------------
Image read_npy(const std::string& path, const std::vector<unsigned char>& data) {
  auto bad = [&](const std::string& why) { return Error("image " + path + " is not a readable .npy array: " + why); };
  const detail::NpyHeader npy = detail::parse_npy(data, bad);
  const std::string& descr = npy.descr;
  const std::vector<int64_t>& dims = npy.shape;
  std::string shape = "(";
  for (size_t i = 0; i < dims.size(); ++i) shape += (i ? ", " : "") + std::to_string(dims[i]);
  shape += ")";
  if (dims.size() != 2 && dims.size() != 3) throw bad("shape " + shape + " is not (H,W) or (H,W,C)");
  const int64_t h = dims[0], w = dims[1], c = dims.size() == 3 ? dims[2] : 1;
  check_size(path, h, w, c);
  size_t item;
  PixelType type;
  if (descr == "|u1" || descr == "<u1") {
    item = 1;
    type = PixelType::U8;
  } else if (descr == "<u2") {
    item = 2;
    type = PixelType::U16;
  } else if (descr == "<f4") {
    item = 4;
    type = PixelType::F32;
  } else if (descr == "<f8") {
    item = 8;
    type = PixelType::F32;  // narrowed like Python's astype(float32)
  } else {
    throw bad("dtype '" + descr + "' (use uint8, uint16, float32 or float64)");
  }
  const size_t count = static_cast<size_t>(h * w * c);
  const size_t begin = npy.data_offset;
  if (data.size() - begin < count * item) throw bad("pixel data truncated");
  Image img;
  img.type = type;
  img.height = static_cast<int>(h);
  img.width = static_cast<int>(w);
  img.channels = static_cast<int>(c);
  if (item == 8) {
    img.bytes.resize(count * 4);
    auto* out = reinterpret_cast<float*>(img.bytes.data());
    for (size_t i = 0; i < count; ++i) {
      double v;
      std::memcpy(&v, data.data() + begin + i * 8, 8);
      out[i] = static_cast<float>(v);
    }
  } else {
    img.bytes.assign(data.begin() + static_cast<std::ptrdiff_t>(begin),
                     data.begin() + static_cast<std::ptrdiff_t>(begin + count * item));
  }
  return img;
}

#ifdef MEDFM_HAVE_PNG
struct PngReader {
  const std::vector<unsigned char>* data;
  size_t pos;
};

[[noreturn]] void png_error_fn(png_structp png, png_const_charp msg) {
  // libpng needs a non-returning handler; longjmp back to read_png, which throws from there.
  auto* text = static_cast<std::string*>(png_get_error_ptr(png));
  *text = msg;
  png_longjmp(png, 1);
}

void png_warning_fn(png_structp, png_const_charp) {}

void png_read_fn(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (r->data->size() - r->pos < n) png_error(png, "truncated file");
  std::memcpy(out, r->data->data() + r->pos, n);
  r->pos += n;
}

Image read_png(const std::string& path, const std::vector<unsigned char>& data) {
  if (data.size() < 8 || png_sig_cmp(data.data(), 0, 8) != 0) throw Error("image " + path + " is not a PNG file");
  std::string message;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &message, png_error_fn, png_warning_fn);
  if (!png) throw Error("cannot decode " + path + ": libpng initialisation failed");
  png_infop info = png_create_info_struct(png);
  PngReader reader{&data, 0};
  Image img;
  std::vector<png_bytep> rows;
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    throw Error("cannot decode PNG " + path + ": " + (message.empty() ? "libpng error" : message));
  }
  png_set_read_fn(png, &reader, png_read_fn);
  png_read_info(png, info);
  const int color = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  png_set_strip_alpha(png);  // alpha carries no intensity
  if (depth == 16) png_set_swap(png);  // PNG stores big-endian; we want native little-endian uint16
  png_read_update_info(png, info);
  const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  const int channels = png_get_channels(png, info);
  const int out_depth = png_get_bit_depth(png, info);
  check_size(path, h, w, channels);
  img.type = out_depth == 16 ? PixelType::U16 : PixelType::U8;
  img.height = static_cast<int>(h);
  img.width = static_cast<int>(w);
  img.channels = channels;
  const size_t row_bytes = png_get_rowbytes(png, info);
  img.bytes.resize(row_bytes * h);
  rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) rows[y] = img.bytes.data() + y * row_bytes;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return img;
}
#endif

}  // namespace

bool has_png_support() {
#ifdef MEDFM_HAVE_PNG
  return true;
#else
  return false;
#endif
}

Image read_image(const std::string& path) {
  const std::string ext = lower_extension(path);
  if (ext != "pgm" && ext != "ppm" && ext != "pnm" && ext != "npy" && ext != "png") {
    throw Error("cannot read image " + path + ": unsupported extension '." + ext +
                "' (supported: .pgm .ppm .npy" + (has_png_support() ? " .png)" : "; .png needs a build with libpng)"));
  }
#ifndef MEDFM_HAVE_PNG
  if (ext == "png") throw Error("cannot read " + path + ": this build has no PNG support (install libpng-dev and rebuild)");
#endif
  const std::vector<unsigned char> data = read_file(path);
  if (ext == "npy") return read_npy(path, data);
#ifdef MEDFM_HAVE_PNG
  if (ext == "png") return read_png(path, data);
#endif
  return read_pnm(path, data);
}

}  // namespace medfm
