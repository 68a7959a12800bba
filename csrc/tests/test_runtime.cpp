// Unit tests of medfm_runtime: metadata parsing, preprocessing, image readers, models and errors.
// Usage: test_runtime DATA_DIR SCRATCH_DIR (ctest passes both). Prints "N passed, N failed".
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "medfm/runtime.hpp"

namespace {

int g_passed = 0, g_failed = 0;
std::string g_data, g_scratch;

#define CHECK(cond)                                                                        \
  do {                                                                                     \
    if (!(cond)) throw std::runtime_error(std::string("CHECK failed: ") + #cond);          \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                          \
  do {                                                                                                 \
    double _a = (a), _b = (b);                                                                         \
    if (!(std::fabs(_a - _b) <= (tol)))                                                                \
      throw std::runtime_error(std::string("CHECK_NEAR failed: ") + #a + " = " + std::to_string(_a) + \
                               " vs " + #b + " = " + std::to_string(_b));                              \
  } while (0)

// The expression must throw medfm::Error whose message contains `needle`.
#define CHECK_ERROR(expr, needle)                                                                          \
  do {                                                                                                     \
    bool _thrown = false;                                                                                  \
    try {                                                                                                  \
      (void)(expr);                                                                                        \
    } catch (const medfm::Error& _e) {                                                                     \
      _thrown = true;                                                                                      \
      if (std::string(_e.what()).find(needle) == std::string::npos)                                        \
        throw std::runtime_error(std::string("error message '") + _e.what() + "' lacks '" + (needle) + "'"); \
    }                                                                                                      \
    if (!_thrown) throw std::runtime_error(std::string("no medfm::Error from ") + #expr);                  \
  } while (0)

void run_test(const char* name, const std::function<void()>& fn) {
  try {
    fn();
    ++g_passed;
    std::cout << "PASS " << name << "\n";
  } catch (const std::exception& e) {
    ++g_failed;
    std::cout << "FAIL " << name << ": " << e.what() << "\n";
  }
}

std::map<std::string, std::string> good_props() {
  return {{"medfm.format", "medfm-compress/onnx"},
          {"medfm.version", "1"},
          {"medfm.task", "multiclass"},
          {"medfm.label_names", "[\"normal\", \"nodule\"]"},
          {"medfm.input_size", "32,48"},
          {"medfm.channels", "3"},
          {"medfm.mean", "0.485,0.456,0.406"},
          {"medfm.std", "0.229,0.224,0.225"},
          {"medfm.window", ""},
          {"medfm.arch", "timm:medfm_resnet10_w24"},
          {"medfm.precision", "int8"},
          {"medfm.provenance", "{\"a\": 1}"}};
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// The formula csrc/tests/make_test_models.py used for the fixtures' Gemm weights.
float tiny_weight(int64_t i, int64_t k) { return static_cast<float>((((7 * i + 3 * k) % 11) - 5) / 10.0); }
float tiny_bias(int64_t k) { return static_cast<float>(k / 4.0 - 0.25); }

std::vector<double> tiny_logits(const std::vector<float>& x, int64_t classes) {
  std::vector<double> z(static_cast<size_t>(classes));
  for (int64_t k = 0; k < classes; ++k) {
    double acc = tiny_bias(k);
    for (size_t i = 0; i < x.size(); ++i) acc += static_cast<double>(x[i]) * tiny_weight(static_cast<int64_t>(i), k);
    z[static_cast<size_t>(k)] = acc;
  }
  return z;
}

void test_metadata() {
  run_test("metadata parses every key", [] {
    auto m = medfm::parse_metadata(good_props(), "m.onnx");
    CHECK(m.preprocess.height == 32 && m.preprocess.width == 48 && m.preprocess.channels == 3);
    CHECK_NEAR(m.preprocess.mean[1], 0.456f, 0);
    CHECK_NEAR(m.preprocess.std[2], 0.225f, 0);
    CHECK(!m.preprocess.window);
    CHECK(m.task == medfm::Task::Multiclass);
    CHECK(m.label_names.size() == 2 && m.label_names[1] == "nodule");
    CHECK(m.arch == "timm:medfm_resnet10_w24" && m.precision == "int8" && m.provenance_json == "{\"a\": 1}");
  });
  run_test("metadata window and python float reprs", [] {
    auto p = good_props();
    p["medfm.window"] = "-1000.0,400.0";
    p["medfm.channels"] = "1";
    p["medfm.mean"] = "1e-05";
    p["medfm.std"] = "0.30000000000000004";
    p["medfm.task"] = "multilabel";
    auto m = medfm::parse_metadata(p, "m.onnx");
    CHECK(m.preprocess.window && m.preprocess.window->first == -1000.0 && m.preprocess.window->second == 400.0);
    CHECK(m.preprocess.mean[0] == 1e-05f && m.preprocess.std[0] == 0.3f);
    CHECK(m.task == medfm::Task::Multilabel);
  });
  run_test("metadata errors name the model and the fix", [] {
    CHECK_ERROR(medfm::parse_metadata({}, "x.onnx"), "x.onnx carries no medfm-compress metadata");
    auto p = good_props();
    p["medfm.version"] = "2";
    CHECK_ERROR(medfm::parse_metadata(p, "x.onnx"), "metadata version '2'");
    p = good_props();
    p.erase("medfm.input_size");
    CHECK_ERROR(medfm::parse_metadata(p, "x.onnx"), "missing key medfm.input_size");
    p = good_props();
    p["medfm.tiles"] = "1";
    CHECK_ERROR(medfm::parse_metadata(p, "x.onnx"), "segment its images with medfm-compress predict");
    p = good_props();
    p["medfm.mean"] = "0.5,abc,0.5";
    CHECK_ERROR(medfm::parse_metadata(p, "x.onnx"), "'abc' is not a finite number");
    p = good_props();
    p["medfm.mean"] = "0.5";
    CHECK_ERROR(medfm::parse_metadata(p, "x.onnx"), "mean/std need 3 values");
    p = good_props();
    p["medfm.std"] = "0.2,0,0.2";
    CHECK_ERROR(medfm::parse_metadata(p, "x.onnx"), "std values must be positive");
    p = good_props();
    p["medfm.window"] = "5,5";
    CHECK_ERROR(medfm::parse_metadata(p, "x.onnx"), "high > low");
    p = good_props();
    p["medfm.task"] = "keypoints";
    CHECK_ERROR(medfm::parse_metadata(p, "x.onnx"), "not 'keypoints'");
    p = good_props();
    p["medfm.input_size"] = "32";
    CHECK_ERROR(medfm::parse_metadata(p, "x.onnx"), "expected 'H,W'");
    p = good_props();
    p["medfm.mean"] = "nan,0.5,0.5";
    CHECK_ERROR(medfm::parse_metadata(p, "x.onnx"), "not a finite number");
  });
  run_test("json string array: escapes, unicode, surrogates", [] {
    auto v = medfm::parse_json_string_array(" [ \"a\\\"b\" , \"c\\\\d\\/\\n\", \"\\u00e9\\u4e2d\", \"\\ud83d\\ude00\", \"\" ] ");
    CHECK(v.size() == 5);
    CHECK(v[0] == "a\"b");
    CHECK(v[1] == "c\\d/\n");
    CHECK(v[2] == "\xc3\xa9\xe4\xb8\xad");
    CHECK(v[3] == "\xf0\x9f\x98\x80");
    CHECK(v[4].empty());
    CHECK(medfm::parse_json_string_array("[]").empty());
  });
  run_test("json string array: malformed input is an error", [] {
    for (const char* bad : {"", "[", "[\"a\"", "[\"a\",]", "[1]", "[\"a\" \"b\"]", "[\"a\"] x", "[\"\\x\"]",
                            "[\"\\ud83d\"]", "[\"\\ude00\"]", "[\"\\u12\"]", "{\"a\": 1}", "[\"a\nb\"]"}) {
      CHECK_ERROR(medfm::parse_json_string_array(bad), "not a JSON array of strings");
    }
  });
}

medfm::PreprocessSpec gray_spec(int h, int w) {
  medfm::PreprocessSpec s;
  s.height = h;
  s.width = w;
  s.channels = 1;
  s.mean = {0.5f};
  s.std = {0.25f};
  return s;
}

void test_preprocess() {
  run_test("uint8 and uint16 scaling, mean/std", [] {
    const uint8_t u8[4] = {0, 51, 204, 255};
    std::vector<float> out(4);
    medfm::preprocess_image({u8, medfm::PixelType::U8, 2, 2, 1}, gray_spec(2, 2), out.data());
    CHECK(out[0] == (0.0f / 255.0f - 0.5f) / 0.25f);
    CHECK(out[1] == (51.0f / 255.0f - 0.5f) / 0.25f);
    CHECK(out[3] == 2.0f);
    const uint16_t u16[4] = {0, 1000, 40000, 65535};
    medfm::preprocess_image({u16, medfm::PixelType::U16, 2, 2, 1}, gray_spec(2, 2), out.data());
    CHECK(out[1] == (1000.0f / 65535.0f - 0.5f) / 0.25f);
    CHECK(out[3] == 2.0f);
  });
  run_test("window clips and scales raw values", [] {
    auto spec = gray_spec(1, 4);
    spec.window = std::make_pair(-1000.0, 400.0);
    const float hu[4] = {-2000.0f, -1000.0f, -300.0f, 3000.0f};
    std::vector<float> out(4);
    medfm::preprocess_image({hu, medfm::PixelType::F32, 1, 4, 1}, spec, out.data());
    CHECK(out[0] == -2.0f && out[1] == -2.0f && out[3] == 2.0f);
    CHECK(out[2] == ((-300.0f + 1000.0f) / 1400.0f - 0.5f) / 0.25f);
  });
  run_test("float images: [0,1] accepted, outside refused, NaN refused", [] {
    const float ok[2] = {0.0f, 1.0005f};
    std::vector<float> out(2);
    medfm::preprocess_image({ok, medfm::PixelType::F32, 1, 2, 1}, gray_spec(1, 2), out.data());
    CHECK(out[1] == 2.0f);  // clipped to 1 like Python
    const float bad[2] = {0.0f, 3.0f};
    CHECK_ERROR(medfm::preprocess_image({bad, medfm::PixelType::F32, 1, 2, 1}, gray_spec(1, 2), out.data()),
                "float images must lie in [0, 1]");
    const float nan[2] = {0.0f, NAN};
    CHECK_ERROR(medfm::preprocess_image({nan, medfm::PixelType::F32, 1, 2, 1}, gray_spec(1, 2), out.data()), "NaN");
  });
  run_test("HWC de-interleave and 1->3 channel repeat", [] {
    medfm::PreprocessSpec s;
    s.height = 1;
    s.width = 2;
    s.channels = 3;
    s.mean = {0.f, 0.f, 0.f};
    s.std = {1.f, 1.f, 1.f};
    const uint8_t rgb[6] = {255, 0, 51, 0, 255, 102};
    std::vector<float> out(6);
    medfm::preprocess_image({rgb, medfm::PixelType::U8, 1, 2, 3}, s, out.data());
    CHECK(out[0] == 1.0f && out[1] == 0.0f && out[2] == 0.0f && out[3] == 1.0f);
    CHECK(out[4] == 51.0f / 255.0f && out[5] == 102.0f / 255.0f);
    const uint8_t g[2] = {255, 51};
    medfm::preprocess_image({g, medfm::PixelType::U8, 1, 2, 1}, s, out.data());
    CHECK(out[0] == 1.0f && out[2] == 1.0f && out[4] == 1.0f && out[5] == 51.0f / 255.0f);
    CHECK_ERROR(medfm::preprocess_image({rgb, medfm::PixelType::U8, 1, 2, 3}, gray_spec(1, 2), out.data()),
                "image has 3 channel(s) but the model expects 1");
  });
  run_test("resize: constant stays constant, upsample is bilinear, downsample averages", [] {
    std::vector<uint8_t> flat(5 * 7, 128);
    std::vector<float> out(9 * 4);
    medfm::preprocess_image({flat.data(), medfm::PixelType::U8, 5, 7, 1}, gray_spec(9, 4), out.data());
    for (float v : out) CHECK_NEAR(v, (128.0f / 255.0f - 0.5f) / 0.25f, 1e-6);
    // 1x2 -> 1x4 upsample: torch bilinear (align_corners=False) gives a, 0.75a+0.25b, 0.25a+0.75b, b.
    const float row[2] = {0.0f, 1.0f};
    auto s = gray_spec(1, 4);
    s.mean = {0.f};
    s.std = {1.f};
    std::vector<float> up(4);
    medfm::preprocess_image({row, medfm::PixelType::F32, 1, 2, 1}, s, up.data());
    CHECK_NEAR(up[0], 0.0, 1e-7);
    CHECK_NEAR(up[1], 0.25, 1e-7);
    CHECK_NEAR(up[2], 0.75, 1e-7);
    CHECK_NEAR(up[3], 1.0, 1e-7);
    // 1x4 -> 1x2 antialiased: a triangle filter twice as wide, clipped at the border (torch gives 1/7, 6/7).
    const float four[4] = {0.0f, 0.0f, 1.0f, 1.0f};
    auto d = gray_spec(1, 2);
    d.mean = {0.f};
    d.std = {1.f};
    std::vector<float> down(2);
    medfm::preprocess_image({four, medfm::PixelType::F32, 1, 4, 1}, d, down.data());
    CHECK_NEAR(down[0], 1.0 / 7.0, 1e-6);
    CHECK_NEAR(down[1], 6.0 / 7.0, 1e-6);
  });
  run_test("probabilities: softmax sums to 1, sigmoid per label", [] {
    auto p = medfm::probabilities({1.0f, 2.0f, 3.0f, 1000.0f, 0.0f, -1000.0f}, 3, medfm::Task::Multiclass);
    CHECK_NEAR(p[0] + p[1] + p[2], 1.0, 1e-6);
    CHECK_NEAR(p[2], std::exp(3.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0)), 1e-7);
    CHECK(p[3] == 1.0f && p[5] == 0.0f);  // no overflow
    auto s = medfm::probabilities({0.0f, 2.0f}, 2, medfm::Task::Multilabel);
    CHECK_NEAR(s[0], 0.5, 1e-7);
    CHECK_NEAR(s[1], 1.0 / (1.0 + std::exp(-2.0)), 1e-7);
    auto v = medfm::probabilities({-3.5f, 187.25f}, 1, medfm::Task::Regression);  // values as they are
    CHECK(v.size() == 2 && v[0] == -3.5f && v[1] == 187.25f);
  });
  run_test("regression metadata: values in the target's units, identity postprocessing", [] {
    auto props = good_props();
    props["medfm.task"] = "regression";
    props["medfm.postprocess"] = "identity";
    props["medfm.label_names"] = "[\"bone_age_months\"]";
    auto meta = medfm::parse_metadata(props, "m.onnx");
    CHECK(meta.task == medfm::Task::Regression && std::string(medfm::task_name(meta.task)) == "regression");
    CHECK(meta.label_names.size() == 1 && meta.label_names[0] == "bone_age_months");
    props["medfm.postprocess"] = "softmax";
    CHECK_ERROR(medfm::parse_metadata(props, "m.onnx"), "regression postprocessing 'softmax' is not supported");
  });
}

void test_images() {
  run_test("PGM 8-bit and 16-bit, PPM, comments", [] {
    write_file(g_scratch + "/a.pgm", std::string("P5\n# a comment\n3 2\n255\n") + std::string("\x01\x02\x03\x04\x05\xff", 6));
    auto a = medfm::read_image(g_scratch + "/a.pgm");
    CHECK(a.type == medfm::PixelType::U8 && a.height == 2 && a.width == 3 && a.channels == 1);
    CHECK(a.bytes[5] == 255);
    write_file(g_scratch + "/b.pgm", std::string("P5 2 1 65535\n") + std::string("\x01\x02\xff\xfe", 4));
    auto b = medfm::read_image(g_scratch + "/b.pgm");
    CHECK(b.type == medfm::PixelType::U16);
    const auto* px = reinterpret_cast<const uint16_t*>(b.bytes.data());
    CHECK(px[0] == 0x0102 && px[1] == 0xfffe);
    write_file(g_scratch + "/c.ppm", std::string("P6\n1 1\n255\n") + "abc");
    auto c = medfm::read_image(g_scratch + "/c.ppm");
    CHECK(c.channels == 3 && c.bytes[2] == 'c');
  });
  run_test("npy uint8 / uint16 / float32 / float64, HW and HWC", [] {
    auto npy = [](const std::string& descr, const std::string& shape, const std::string& payload) {
      std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
      while ((10 + header.size() + 1) % 64 != 0) header += ' ';
      header += '\n';
      std::string out = std::string("\x93NUMPY\x01\x00", 8);
      out += static_cast<char>(header.size() & 0xff);
      out += static_cast<char>(header.size() >> 8);
      return out + header + payload;
    };
    write_file(g_scratch + "/u8.npy", npy("|u1", "(2, 2)", "\x01\x02\x03\x04"));
    auto a = medfm::read_image(g_scratch + "/u8.npy");
    CHECK(a.type == medfm::PixelType::U8 && a.height == 2 && a.bytes[3] == 4);
    uint16_t u16[3] = {1, 2, 65535};
    write_file(g_scratch + "/u16.npy", npy("<u2", "(1, 1, 3)", std::string(reinterpret_cast<char*>(u16), 6)));
    auto b = medfm::read_image(g_scratch + "/u16.npy");
    CHECK(b.type == medfm::PixelType::U16 && b.channels == 3 && reinterpret_cast<const uint16_t*>(b.bytes.data())[2] == 65535);
    double f64[2] = {0.25, 0.5};
    write_file(g_scratch + "/f64.npy", npy("<f8", "(1, 2)", std::string(reinterpret_cast<char*>(f64), 16)));
    auto c = medfm::read_image(g_scratch + "/f64.npy");
    CHECK(c.type == medfm::PixelType::F32 && reinterpret_cast<const float*>(c.bytes.data())[1] == 0.5f);
    write_file(g_scratch + "/i32.npy", npy("<i4", "(1, 1)", "abcd"));
    CHECK_ERROR(medfm::read_image(g_scratch + "/i32.npy"), "dtype '<i4'");
    std::string fortran = npy("|u1", "(2, 2)", "\x01\x02\x03\x04");
    write_file(g_scratch + "/f.npy", fortran.replace(fortran.find("False"), 5, "True "));
    CHECK_ERROR(medfm::read_image(g_scratch + "/f.npy"), "Fortran");
    write_file(g_scratch + "/short.npy", npy("|u1", "(4, 4)", "\x01\x02"));
    CHECK_ERROR(medfm::read_image(g_scratch + "/short.npy"), "truncated");
    write_file(g_scratch + "/4d.npy", npy("|u1", "(1, 1, 1, 1)", "\x01"));
    CHECK_ERROR(medfm::read_image(g_scratch + "/4d.npy"), "not (H,W) or (H,W,C)");
  });
  run_test("bad image files are errors, not crashes", [] {
    CHECK_ERROR(medfm::read_image(g_scratch + "/missing.pgm"), "no such file");
    CHECK_ERROR(medfm::read_image(g_scratch + "/x.jpg"), "unsupported extension '.jpg'");
    write_file(g_scratch + "/trunc.pgm", "P5\n100 100\n255\nabc");
    CHECK_ERROR(medfm::read_image(g_scratch + "/trunc.pgm"), "pixel data truncated");
    write_file(g_scratch + "/text.pgm", "P2\n1 1\n255\n7\n");
    CHECK_ERROR(medfm::read_image(g_scratch + "/text.pgm"), "only binary P5/P6");
    write_file(g_scratch + "/huge.pgm", "P5\n9999999999 9999999999\n255\n");
    CHECK_ERROR(medfm::read_image(g_scratch + "/huge.pgm"), "bad width");
    write_file(g_scratch + "/big.pgm", "P5\n60000 60000\n255\n");
    CHECK_ERROR(medfm::read_image(g_scratch + "/big.pgm"), "implausibly large");
    write_file(g_scratch + "/garbage.png", "not a png at all");
    CHECK_ERROR(medfm::read_image(g_scratch + "/garbage.png"), "png");
  });
}

void test_models() {
  run_test("load gray model: metadata, logits, probabilities", [] {
    auto model = medfm::Model::load(g_data + "/tiny_gray.onnx");
    const auto& m = model.meta();
    CHECK(m.label_names.size() == 3 && m.label_names[1] == "nod\"ule" && m.label_names[2] == "\xc3\xa9panchement");
    std::vector<uint8_t> px(64);
    for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>((i * 37) % 256);
    medfm::ImageView view{px.data(), medfm::PixelType::U8, 8, 8, 1};
    auto r = model.predict({view, view});
    CHECK(r.batch == 2 && r.num_classes == 3);
    std::vector<float> x(64);
    medfm::preprocess_image(view, m.preprocess, x.data());
    auto z = tiny_logits(x, 3);
    for (int k = 0; k < 3; ++k) {
      CHECK_NEAR(r.logit(0, k), z[static_cast<size_t>(k)], 1e-4);
      CHECK(r.logit(1, k) == r.logit(0, k));
    }
    CHECK_NEAR(r.probability(0, 0) + r.probability(0, 1) + r.probability(0, 2), 1.0, 1e-6);
    int best = 0;
    for (int k = 1; k < 3; ++k) if (z[static_cast<size_t>(k)] > z[static_cast<size_t>(best)]) best = k;
    CHECK(r.top1[0] == best);
  });
  run_test("rgb multilabel model with window, resized HW input", [] {
    auto model = medfm::Model::load(g_data + "/tiny_rgb_multilabel.onnx");
    CHECK(model.meta().task == medfm::Task::Multilabel && model.meta().preprocess.window);
    std::vector<float> hu(10 * 12);
    for (size_t i = 0; i < hu.size(); ++i) hu[i] = static_cast<float>(i * 5) - 200.0f;
    medfm::ImageView view{hu.data(), medfm::PixelType::F32, 10, 12, 1};
    auto r = model.predict({view});
    std::vector<float> x(3 * 4 * 6);
    medfm::preprocess_image(view, model.meta().preprocess, x.data());
    auto z = tiny_logits(x, 2);
    for (int k = 0; k < 2; ++k) {
      CHECK_NEAR(r.logit(0, k), z[static_cast<size_t>(k)], 1e-4);
      CHECK_NEAR(r.probability(0, k), 1.0 / (1.0 + std::exp(-z[static_cast<size_t>(k)])), 1e-5);
    }
  });
  run_test("run is thread-safe: 4 threads, identical results", [] {
    auto model = medfm::Model::load(g_data + "/tiny_gray.onnx");
    std::vector<float> input(64 * 3);
    for (size_t i = 0; i < input.size(); ++i) input[i] = static_cast<float>(i % 13) / 13.0f;
    const auto expected = model.run(input.data(), 3).logits;
    std::vector<int> mismatches(4, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int it = 0; it < 200; ++it) {
          if (model.run(input.data(), 3).logits != expected) ++mismatches[static_cast<size_t>(t)];
        }
      });
    }
    for (auto& th : threads) th.join();
    for (int m : mismatches) CHECK(m == 0);
  });
  run_test("bad models are errors with messages", [] {
    CHECK_ERROR(medfm::Model::load(g_scratch + "/nope.onnx"), "no such file");
    write_file(g_scratch + "/corrupt.onnx", "this is not a protobuf");
    CHECK_ERROR(medfm::Model::load(g_scratch + "/corrupt.onnx"), "cannot load model");
    CHECK_ERROR(medfm::Model::load(g_data + "/no_metadata.onnx"), "carries no medfm-compress metadata");
    auto model = medfm::Model::load(g_data + "/tiny_gray.onnx");
    CHECK_ERROR(model.run(nullptr, 1), "non-empty batch");
    CHECK_ERROR(model.predict({}), "empty batch");
    std::vector<uint8_t> rgb(8 * 8 * 3);
    CHECK_ERROR(model.predict({{rgb.data(), medfm::PixelType::U8, 8, 8, 3}}), "expects 1");
  });
}

// make_test_models.py's tiny_seg.onnx: class k scores (k - 1) * x + k / 4 - 0.25 at every other pixel.
double seg_logit(double x, int k) { return (k - 1) * x + k / 4.0 - 0.25; }

void test_segmentation() {
  run_test("segmentation model: class maps, argmax masks, resized to the image", [] {
    auto model = medfm::Model::load(g_data + "/tiny_seg.onnx");
    CHECK(model.meta().task == medfm::Task::Segmentation);
    CHECK(std::string(medfm::task_name(model.meta().task)) == "segmentation");
    std::vector<uint8_t> px(64);
    for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>((i * 53) % 256);
    medfm::ImageView view{px.data(), medfm::PixelType::U8, 8, 8, 1};
    auto r = model.predict({view, view});
    CHECK(r.batch == 2 && r.num_classes == 3 && r.map_height == 4 && r.map_width == 4);
    CHECK(r.masks.size() == 2 * 16 && r.top1.empty() && r.probabilities.empty());
    std::vector<float> x(64);
    medfm::preprocess_image(view, model.meta().preprocess, x.data());
    int seen[3] = {0, 0, 0};
    for (int row = 0; row < 4; ++row) {
      for (int col = 0; col < 4; ++col) {
        const double v = x[static_cast<size_t>(2 * row * 8 + 2 * col)];
        int best = 0;
        for (int k = 1; k < 3; ++k) if (seg_logit(v, k) > seg_logit(v, best)) best = k;
        CHECK_NEAR(r.logits[static_cast<size_t>(2 * 16 + row * 4 + col)], seg_logit(v, 2), 1e-5);
        CHECK(r.mask(0)[row * 4 + col] == best && r.mask(1)[row * 4 + col] == best);
        ++seen[best];
      }
    }
    CHECK(seen[0] > 0 && seen[2] > 0);  // the fixture's pixels reach both ends of the score ramp
  });
  run_test("argmax takes the first of equal maxima; resize_mask is numpy's nearest", [] {
    const std::vector<float> maps = {1, 5, 2, 2, /* class 1 */ 1, 5, 3, 2};  // 1 image, 2 classes, 1x4
    auto m = medfm::argmax_maps(maps.data(), 1, 2, 1, 4);
    CHECK((m == std::vector<uint16_t>{0, 0, 1, 0}));
    // 2x3 -> 5x4: source row floor((i + .5) * 2 / 5) = 0,0,1,1,1; column floor((j + .5) * 3 / 4) = 0,1,1,2.
    const std::vector<uint16_t> small = {1, 2, 3, 4, 5, 6};
    auto big = medfm::resize_mask(small.data(), 2, 3, 5, 4);
    const std::vector<uint16_t> want = {1, 2, 2, 3, 1, 2, 2, 3, 4, 5, 5, 6, 4, 5, 5, 6, 4, 5, 5, 6};
    CHECK(big == want);
    auto down = medfm::resize_mask(want.data(), 5, 4, 2, 3);  // floor((i + .5) * 5 / 2) = 1, 3
    CHECK((down == std::vector<uint16_t>{1, 2, 3, 4, 5, 6}));
  });
  run_test("write_mask: PGM 8/16-bit and .npy read back; bad names are errors", [] {
    const std::vector<uint16_t> mask = {0, 1, 2, 3, 4, 5};
    medfm::write_mask(g_scratch + "/m.pgm", mask.data(), 2, 3);
    auto a = medfm::read_image(g_scratch + "/m.pgm");
    CHECK(a.type == medfm::PixelType::U8 && a.height == 2 && a.width == 3 && a.bytes[5] == 5);
    medfm::write_mask(g_scratch + "/m.npy", mask.data(), 2, 3);
    auto b = medfm::read_image(g_scratch + "/m.npy");
    CHECK(b.type == medfm::PixelType::U8 && b.height == 2 && b.width == 3 && b.bytes[4] == 4);
    const std::vector<uint16_t> wide = {0, 300, 65535, 7};
    medfm::write_mask(g_scratch + "/w.pgm", wide.data(), 2, 2);
    auto c = medfm::read_image(g_scratch + "/w.pgm");
    CHECK(c.type == medfm::PixelType::U16);
    CHECK(reinterpret_cast<const uint16_t*>(c.bytes.data())[1] == 300);
    medfm::write_mask(g_scratch + "/w.npy", wide.data(), 2, 2);
    auto d = medfm::read_image(g_scratch + "/w.npy");
    CHECK(d.type == medfm::PixelType::U16 && reinterpret_cast<const uint16_t*>(d.bytes.data())[2] == 65535);
    CHECK_ERROR(medfm::write_mask(g_scratch + "/m.png", mask.data(), 2, 3), "use a .pgm or .npy");
    CHECK_ERROR(medfm::write_mask(g_scratch + "/no/such/dir/m.pgm", mask.data(), 2, 3), "not writable");
  });
  run_test("segmentation metadata on a classifier output is refused", [] {
    CHECK_ERROR(medfm::Model::load(g_data + "/seg_meta_on_classifier.onnx"), "says task segmentation");
    auto props = good_props();
    props["medfm.task"] = "segmentation";
    props["medfm.postprocess"] = "sigmoid-threshold";
    CHECK_ERROR(medfm::parse_metadata(props, "m.onnx"), "not supported");
    props["medfm.task"] = "detection";
    CHECK_ERROR(medfm::parse_metadata(props, "m.onnx"), "not 'detection'");
  });
}


void test_volumes() {
  run_test("window_starts and the Gaussian importance map follow MONAI's schedule", [] {
    CHECK((medfm::window_starts(10, 4, 0.25) == std::vector<int64_t>{0, 3, 6}));
    CHECK((medfm::window_starts(11, 4, 0.5) == std::vector<int64_t>{0, 2, 4, 6, 7}));
    CHECK((medfm::window_starts(4, 4, 0.5) == std::vector<int64_t>{0}));
    CHECK((medfm::window_starts(5, 1, 0.9) == std::vector<int64_t>{0, 1, 2, 3, 4}));  // the step is at least 1
    CHECK_ERROR(medfm::window_starts(3, 4, 0.25), "roi <= size");
    const auto w = medfm::importance_map({4, 6, 3});
    CHECK(w.size() == 72);
    float lo = w[0], hi = w[0];
    for (float v : w) { lo = std::min(lo, v); hi = std::max(hi, v); }
    CHECK(lo >= 1e-3f && hi <= 1.0f && lo < hi);
    CHECK(w[(1 * 6 + 2) * 3 + 1] == hi && w[(2 * 6 + 3) * 3 + 1] == hi);  // the centre voxels, symmetric
    CHECK(w[0] == w[(3 * 6 + 5) * 3 + 2]);                                // opposite corners
  });
  run_test("grid_shape rounds half to even; linear and nearest resampling", [] {
    CHECK((medfm::grid_shape({5, 7, 4}, {1.0, 1.0, 3.0}, {2.0, 2.0, 1.5}) == std::array<int64_t, 3>{2, 4, 8}));
    CHECK((medfm::grid_shape({1, 1, 1}, {1.0, 1.0, 1.0}, {9.0, 9.0, 9.0}) == std::array<int64_t, 3>{1, 1, 1}));
    CHECK_ERROR(medfm::grid_shape({2, 2, 2}, {1.0, 1.0, 1.0}, {1.0, 0.0, 1.0}), "positive");
    // 2 -> 4 along x: source positions clip(-0.25, 0.25, 0.75, 1.25) = 0, 0.25, 0.75, 1.
    const auto up = medfm::resample_volume({0.0f, 10.0f}, {2, 1, 1}, {4, 1, 1});
    CHECK((up == std::vector<float>{0.0f, 2.5f, 7.5f, 10.0f}));
    const std::vector<float> ramp = {0, 1, 2, 3, 4, 5};  // (1, 1, 6) along z
    CHECK((medfm::resample_volume(ramp, {1, 1, 6}, {1, 1, 6}) == ramp));
    const auto labels = medfm::resample_labels({1, 2}, {1, 1, 2}, {1, 1, 5});  // floor((i + .5) * 2 / 5)
    CHECK((labels == std::vector<uint16_t>{1, 1, 2, 2, 2}));
  });
  run_test("3-D model: sliding windows over a volume equal the pointwise model, padding included", [] {
    auto model = medfm::Model::load(g_data + "/tiny_seg3d.onnx");
    const auto& pre = model.meta().preprocess;
    CHECK(pre.is_volume() && pre.height == 4 && pre.width == 4 && pre.depth == 3 && model.fixed_batch() == 0);
    CHECK((pre.spacing == std::vector<double>{2.0, 2.0, 3.0}));
    CHECK_ERROR(model.run(std::vector<float>(48).data(), 1), "3-D segmentation model");
    const std::array<int64_t, 3> shape{9, 7, 2};  // z smaller than the window: padded, then cropped
    std::vector<float> hu(9 * 7 * 2);
    for (size_t i = 0; i < hu.size(); ++i) hu[i] = static_cast<float>(static_cast<int>(i * 37 % 101) * 4 - 100);
    int64_t classes = 0;
    int64_t calls = 0;
    medfm::SlidingWindowOptions opt;
    opt.sw_batch_size = 3;
    opt.progress = [&](int64_t done, int64_t total) { ++calls; CHECK(done <= total); };
    const auto mask = medfm::segment_grid(model, hu, shape, opt, &classes);
    CHECK(classes == 3 && mask.size() == hu.size() && calls >= 2);
    int seen[3] = {0, 0, 0};
    for (size_t i = 0; i < hu.size(); ++i) {
      const double x = ((std::min(std::max(static_cast<double>(hu[i]), -100.0), 300.0) + 100.0) / 400.0 - 0.5) / 0.25;
      int best = 0;
      for (int k = 1; k < 3; ++k) if (seg_logit(x, k) > seg_logit(x, best)) best = k;
      if (std::fabs(seg_logit(x, best) - std::max(seg_logit(x, (best + 1) % 3), seg_logit(x, (best + 2) % 3))) < 1e-4) continue;
      CHECK(mask[i] == best);
      ++seen[best];
    }
    CHECK(seen[0] > 0 && seen[2] > 0);
    CHECK_ERROR(medfm::segment_grid(medfm::Model::load(g_data + "/tiny_seg.onnx"), hu, shape), "takes 2-D images");
    opt.overlap = 1.0;
    CHECK_ERROR(medfm::segment_grid(model, hu, shape, opt), "overlap must be in [0, 1)");
  });
  run_test("volume masks: .npy and NIfTI written, read back on the same grid; bad volumes are errors", [] {
    auto model = medfm::Model::load(g_data + "/tiny_seg3d.onnx");
    std::vector<uint16_t> mask(5 * 4 * 3);
    for (size_t i = 0; i < mask.size(); ++i) mask[i] = static_cast<uint16_t>(i % 3);
    medfm::Volume v;
    v.shape = {5, 4, 3};
    v.spacing = {2.0, 2.0, 3.0};
    v.affine = {-2, 0, 0, 10, 0, -2, 0, 20, 0, 0, 3, -30, 0, 0, 0, 1};
    v.source = "test";
    const std::vector<std::string> names = {"background", "organ", "lesion"};
    medfm::write_volume_mask(g_scratch + "/v.mask.npy", mask, v, names);
    auto a = medfm::read_volume(g_scratch + "/v.mask.npy", {2.0, 2.0, 3.0});
    CHECK(a.shape == v.shape && a.spacing == v.spacing);
    for (size_t i = 0; i < mask.size(); ++i) CHECK(a.data[i] == mask[i]);
    for (const char* name : {"/v.mask.nii", "/v.mask.nii.gz"}) {
      if (std::string(name).find(".gz") != std::string::npos && !medfm::has_gzip_support()) continue;
      medfm::write_volume_mask(g_scratch + name, mask, v, names);
      auto b = medfm::read_volume(g_scratch + name);  // LPS affine: read back in the same order
      CHECK(b.from_nifti && b.shape == v.shape);
      for (size_t i = 0; i < mask.size(); ++i) CHECK(b.data[i] == mask[i]);
      for (size_t k = 0; k < 16; ++k) CHECK_NEAR(b.affine[k], v.affine[k], 1e-5);
      CHECK_NEAR(b.spacing[2], 3.0, 1e-6);
    }
    CHECK_ERROR(medfm::write_volume_mask(g_scratch + "/v.mask.pgm", mask, v), "name a .nii, .nii.gz or .npy");
    medfm::Volume huge = v;
    huge.shape = {40000, 1, 1};
    CHECK_ERROR(medfm::write_volume_mask(g_scratch + "/huge.nii", std::vector<uint16_t>(40000), huge),
                "at most 32767 voxels per axis");
    CHECK_ERROR(medfm::write_volume_mask(g_scratch + "/v.npy", std::vector<uint16_t>(3), v), "not on the grid");
    CHECK_ERROR(medfm::read_volume(g_scratch + "/missing.nii"), "no such file");
    CHECK_ERROR(medfm::read_volume(g_scratch + "/v.mask.pgm"), "use a .nii, .nii.gz or .npy");
    CHECK_ERROR(medfm::read_volume(g_scratch + "/m.npy"), "(X, Y, Z) array");  // a 2-D mask from above
    {
      std::ofstream f(g_scratch + "/short.nii", std::ios::binary);
      f << "not a nifti file";
    }
    CHECK_ERROR(medfm::read_volume(g_scratch + "/short.nii"), "not a readable NIfTI file");
    const std::vector<float> nan = {0.0f, NAN, 1.0f, 2.0f};
    std::string bytes(reinterpret_cast<const char*>(nan.data()), 16);
    {
      std::ofstream f(g_scratch + "/nan.npy", std::ios::binary);
      std::string h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 2), }";
      while ((10 + h.size() + 1) % 64) h += ' ';
      h += '\n';
      f << std::string("\x93NUMPY\x01\x00", 8) << static_cast<char>(h.size()) << '\0' << h << bytes;
    }
    CHECK_ERROR(medfm::read_volume(g_scratch + "/nan.npy"), "1 NaN or infinite voxels");
  });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: test_runtime DATA_DIR SCRATCH_DIR\n";
    return 2;
  }
  g_data = argv[1];
  g_scratch = argv[2];
  test_metadata();
  test_preprocess();
  test_images();
  test_models();
  test_segmentation();
  test_volumes();
  std::cout << g_passed << " passed, " << g_failed << " failed\n";
  return g_failed == 0 ? 0 : 1;
}
