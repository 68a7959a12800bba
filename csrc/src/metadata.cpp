// Reading the flat `medfm.*` metadata_props written by medfm_compress/runtime/metadata.py.
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "medfm/runtime.hpp"

namespace medfm {

namespace {

constexpr const char* kMetaFormat = "medfm-compress/onnx";
constexpr const char* kMetaVersion = "1";

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t pos = s.find(sep, start);
    parts.push_back(trim(s.substr(start, pos == std::string::npos ? std::string::npos : pos - start)));
    if (pos == std::string::npos) break;
    start = pos + 1;
  }
  return parts;
}

// from_chars is locale-independent (strtod would read "0,5" under a German locale).
double parse_double(const std::string& text, const std::string& what) {
  double value = 0.0;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(first, last, value);
  if (text.empty() || ec != std::errc() || ptr != last || !std::isfinite(value)) {
    throw Error(what + ": '" + text + "' is not a finite number");
  }
  return value;
}

int parse_int(const std::string& text, const std::string& what) {
  int value = 0;
  const char* last = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), last, value);
  if (text.empty() || ec != std::errc() || ptr != last) throw Error(what + ": '" + text + "' is not an integer");
  return value;
}

std::vector<float> parse_floats(const std::string& text, const std::string& what) {
  std::vector<float> out;
  for (const auto& part : split(text, ',')) out.push_back(static_cast<float>(parse_double(part, what)));
  return out;
}

const std::string& require(const std::map<std::string, std::string>& props, const std::string& key,
                           const std::string& source) {
  auto it = props.find(key);
  if (it == props.end()) {
    throw Error(source + " has malformed medfm metadata (missing key " + key + "); re-export it");
  }
  return it->second;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace

const char* task_name(Task task) {
  switch (task) {
    case Task::Multiclass: return "multiclass";
    case Task::Binary: return "binary";
    case Task::Multilabel: return "multilabel";
    case Task::Segmentation: return "segmentation";
    case Task::Regression: return "regression";
  }
  return "unknown";
}

void PreprocessSpec::validate(const std::string& source) const {
  const std::string prefix = source + " has invalid preprocessing metadata: ";
  if (channels != 1 && channels != 3) throw Error(prefix + "channels must be 1 or 3, got " + std::to_string(channels));
  if (mean.size() != static_cast<size_t>(channels) || std.size() != static_cast<size_t>(channels)) {
    throw Error(prefix + "mean/std need " + std::to_string(channels) + " values (one per channel), got " +
                std::to_string(mean.size()) + " and " + std::to_string(std.size()));
  }
  for (float s : std) {
    if (!(s > 0.0f)) throw Error(prefix + "std values must be positive");
  }
  if (height <= 0 || width <= 0 || depth < 0) throw Error(prefix + "input_size must be (height, width) > 0");
  if (depth > 0 && channels != 1) throw Error(prefix + "volume models take 1 channel, got " + std::to_string(channels));
  if (window && !(window->second > window->first)) {
    throw Error(prefix + "intensity window must be (low, high) with high > low");
  }
}

std::vector<std::string> parse_json_string_array(const std::string& text) {
  std::vector<std::string> out;
  size_t i = 0;
  const size_t n = text.size();
  auto fail = [&](const std::string& why) -> Error {
    return Error("label names are not a JSON array of strings (" + why + " at offset " + std::to_string(i) + ")");
  };
  auto skip_ws = [&] {
    while (i < n && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) ++i;
  };
  auto hex4 = [&]() -> uint32_t {
    if (i + 4 > n) throw fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = text[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
      else throw fail("bad hex digit in \\u escape");
    }
    return v;
  };
  skip_ws();
  if (i >= n || text[i] != '[') throw fail("expected '['");
  ++i;
  skip_ws();
  if (i < n && text[i] == ']') {
    ++i;
  } else {
    while (true) {
      skip_ws();
      if (i >= n || text[i] != '"') throw fail("expected a string");
      ++i;
      std::string value;
      while (true) {
        if (i >= n) throw fail("unterminated string");
        char c = text[i++];
        if (c == '"') break;
        if (static_cast<unsigned char>(c) < 0x20) throw fail("control character in string");
        if (c != '\\') {
          value += c;
          continue;
        }
        if (i >= n) throw fail("unterminated escape");
        char e = text[i++];
        switch (e) {
          case '"': value += '"'; break;
          case '\\': value += '\\'; break;
          case '/': value += '/'; break;
          case 'b': value += '\b'; break;
          case 'f': value += '\f'; break;
          case 'n': value += '\n'; break;
          case 'r': value += '\r'; break;
          case 't': value += '\t'; break;
          case 'u': {
            uint32_t cp = hex4();
            if (cp >= 0xD800 && cp <= 0xDBFF) {  // high surrogate: a low one must follow
              if (i + 2 > n || text[i] != '\\' || text[i + 1] != 'u') throw fail("lone high surrogate");
              i += 2;
              uint32_t lo = hex4();
              if (lo < 0xDC00 || lo > 0xDFFF) throw fail("bad low surrogate");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
              throw fail("lone low surrogate");
            }
            append_utf8(value, cp);
            break;
          }
          default: throw fail(std::string("unknown escape \\") + e);
        }
      }
      out.push_back(std::move(value));
      skip_ws();
      if (i < n && text[i] == ',') {
        ++i;
        continue;
      }
      if (i < n && text[i] == ']') {
        ++i;
        break;
      }
      throw fail("expected ',' or ']'");
    }
  }
  skip_ws();
  if (i != n) throw fail("trailing characters");
  return out;
}

ModelMeta parse_metadata(const std::map<std::string, std::string>& props, const std::string& source) {
  auto format = props.find("medfm.format");
  if (format == props.end() || format->second != kMetaFormat) {
    throw Error(source + " carries no medfm-compress metadata; export it with `medfm-compress export`");
  }
  auto version = props.find("medfm.version");
  if (version == props.end() || version->second != kMetaVersion) {
    throw Error(source + " has metadata version '" + (version == props.end() ? "" : version->second) +
                "'; this runtime reads " + kMetaVersion);
  }
  ModelMeta meta;
  try {
    auto size = split(require(props, "medfm.input_size", source), ',');
    if (size.size() != 2 && size.size() != 3) throw Error("medfm.input_size: expected 'H,W' or 'X,Y,Z'");
    meta.preprocess.height = parse_int(size[0], "medfm.input_size");
    meta.preprocess.width = parse_int(size[1], "medfm.input_size");
    if (size.size() == 3) {
      meta.preprocess.depth = parse_int(size[2], "medfm.input_size");
      if (meta.preprocess.depth <= 0) throw Error("medfm.input_size: sizes must be > 0");
    }
    auto spacing = props.find("medfm.spacing");
    if (spacing != props.end() && !trim(spacing->second).empty()) {
      for (const auto& part : split(spacing->second, ',')) {
        const double v = parse_double(part, "medfm.spacing");
        if (!(v > 0.0)) throw Error("medfm.spacing: sizes must be > 0 mm");
        meta.preprocess.spacing.push_back(v);
      }
      if (meta.preprocess.spacing.size() != 3 || size.size() != 3) {
        throw Error("medfm.spacing: expected 'SX,SY,SZ' on a volume model (input X,Y,Z)");
      }
    }
    auto tiles = props.find("medfm.tiles");
    if (tiles != props.end() && trim(tiles->second) == "1") {
      throw Error(source + " is a 2-D model trained on patches (medfm.tiles): it segments whole images by sliding "
                  "windows, which this runtime runs for volumes only; segment its images with medfm-compress predict");
    }
    meta.preprocess.channels = parse_int(require(props, "medfm.channels", source), "medfm.channels");
    meta.preprocess.mean = parse_floats(require(props, "medfm.mean", source), "medfm.mean");
    meta.preprocess.std = parse_floats(require(props, "medfm.std", source), "medfm.std");
    auto window = props.find("medfm.window");
    if (window != props.end() && !trim(window->second).empty()) {
      auto parts = split(window->second, ',');
      if (parts.size() != 2) throw Error("medfm.window: expected 'LOW,HIGH'");
      meta.preprocess.window = std::make_pair(parse_double(parts[0], "medfm.window"),
                                              parse_double(parts[1], "medfm.window"));
    }
    const std::string& task = require(props, "medfm.task", source);
    if (task == "multiclass") meta.task = Task::Multiclass;
    else if (task == "binary") meta.task = Task::Binary;
    else if (task == "multilabel") meta.task = Task::Multilabel;
    else if (task == "segmentation") meta.task = Task::Segmentation;
    else if (task == "regression") meta.task = Task::Regression;
    else throw Error("medfm.task: this runtime runs multiclass, binary, multilabel, segmentation and regression "
                     "models, not '" + task + "'");
    if (meta.task == Task::Regression) {
      // A regression model's outputs are its values in the targets' units: nothing to apply.
      auto post = props.find("medfm.postprocess");
      if (post != props.end() && post->second != "identity") {
        throw Error("medfm.postprocess: regression postprocessing '" + post->second +
                    "' is not supported (this runtime reads the values as they are: identity)");
      }
    }
    if (meta.task == Task::Segmentation) {
      // Label maps come from softmax + argmax per pixel, the only dense postprocessing export writes.
      auto post = props.find("medfm.postprocess");
      if (post != props.end() && post->second != "softmax-argmax") {
        throw Error("medfm.postprocess: segmentation postprocessing '" + post->second +
                    "' is not supported (this runtime does softmax-argmax)");
      }
    }
    meta.label_names = parse_json_string_array(require(props, "medfm.label_names", source));
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.rfind(source, 0) == 0) throw;  // already names the model
    throw Error(source + " has malformed medfm metadata (" + msg + "); re-export it");
  }
  if (auto it = props.find("medfm.arch"); it != props.end()) meta.arch = it->second;
  if (auto it = props.find("medfm.precision"); it != props.end() && !it->second.empty()) meta.precision = it->second;
  if (auto it = props.find("medfm.provenance"); it != props.end() && !it->second.empty()) {
    meta.provenance_json = it->second;
  }
  meta.preprocess.validate(source);
  return meta;
}

}  // namespace medfm
