// tvm_shuffle.h: run a tvm_shuffle bundle from C++ (header-only).
//
//   tvm_shuffle::Model model("path/to/bundle");         // the --out directory
//   std::vector<float> image(model.input_size());       // NCHW, normalized
//   std::vector<tvm_shuffle::Output> out = model.run(image);
//   // out[0].shape == {1, 1000}, out[0].data: the logits
//
// A bundle is the output directory of `python -m tvm_shuffle.compile` or
// `tune`: model.so, manifest.json, lib/ (the TVM runtime for the bundle's
// architecture), include/ (this header, tvm_ffi's headers) and example/.
//
// Build: C++17, link lib/libtvm_ffi.so and libdl (example/CMakeLists.txt does
// both). The TVM runtime itself (lib/libtvm_runtime.so, plus the CUDA runtime
// for CUDA bundles) is loaded from the bundle when a Model is constructed, so
// a bundle without it fails with a tvm_shuffle::Error instead of a loader
// message before main().
//
// Every failure a user can cause (a bundle for another architecture, a missing
// runtime library, a manifest that does not match model.so, an input of the
// wrong size) throws tvm_shuffle::Error with a message that says what to fix.
#ifndef TVM_SHUFFLE_H_
#define TVM_SHUFFLE_H_

#include <dlfcn.h>
#ifdef __linux__
#include <sched.h>
#endif
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace tvm_shuffle {

/*! \brief Every error of this API: a bad bundle, a bad input, a failed load. */
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

/*! \brief One output of the model, copied to host memory. */
struct Output {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

namespace detail {

#if defined(__x86_64__) || defined(_M_X64)
inline constexpr const char* kCompiledArch = "x86_64";
#elif defined(__aarch64__) || defined(_M_ARM64)
inline constexpr const char* kCompiledArch = "aarch64";
#else
inline constexpr const char* kCompiledArch = "unknown";
#endif

// ---------------------------------------------------------------- JSON
// Just enough JSON for manifest.json (which Python's json module writes).

struct Json {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  Type type = Type::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  std::vector<std::pair<std::string, Json>> object;  // a vector: std::map of an incomplete type is not portable

  const Json* find(const std::string& key) const {
    for (const auto& kv : object) {
      if (kv.first == key) return &kv.second;
    }
    return nullptr;
  }
};

class JsonParser {
 public:
  JsonParser(const std::string& text, std::string source) : text_(text), source_(std::move(source)) {}

  Json parse() {
    Json value = value_();
    skip_space();
    if (pos_ != text_.size()) fail("trailing characters");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(source_ + " is not valid JSON: " + what + " at byte " + std::to_string(pos_));
  }
  void skip_space() {
    while (pos_ < text_.size() && std::strchr(" \t\r\n", text_[pos_]) != nullptr) ++pos_;
  }
  char peek() {
    skip_space();
    if (pos_ >= text_.size()) fail("unexpected end");
    return text_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  bool consume_word(const char* word) {
    size_t n = std::strlen(word);
    if (text_.compare(pos_, n, word) != 0) return false;
    pos_ += n;
    return true;
  }

  Json value_() {
    Json v;
    char c = peek();
    if (c == '{') {
      v.type = Json::Type::kObject;
      ++pos_;
      if (peek() == '}') return ++pos_, v;
      while (true) {
        std::string key = string_();
        expect(':');
        v.object.emplace_back(std::move(key), value_());
        if (peek() == '}') return ++pos_, v;
        expect(',');
      }
    }
    if (c == '[') {
      v.type = Json::Type::kArray;
      ++pos_;
      if (peek() == ']') return ++pos_, v;
      while (true) {
        v.array.push_back(value_());
        if (peek() == ']') return ++pos_, v;
        expect(',');
      }
    }
    if (c == '"') {
      v.type = Json::Type::kString;
      v.string = string_();
      return v;
    }
    if (consume_word("true")) {
      v.type = Json::Type::kBool;
      v.boolean = true;
      return v;
    }
    if (consume_word("false")) {
      v.type = Json::Type::kBool;
      return v;
    }
    if (consume_word("null")) return v;
    const char* begin = text_.c_str() + pos_;
    char* end = nullptr;
    v.number = std::strtod(begin, &end);
    if (end == begin) fail("unexpected character");
    v.type = Json::Type::kNumber;
    pos_ += static_cast<size_t>(end - begin);
    return v;
  }

  std::string string_() {
    expect('"');
    std::string out;
    while (pos_ < text_.size() && text_[pos_] != '"') {
      char c = text_[pos_++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) break;
      char e = text_[pos_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (pos_ + 4 > text_.size()) fail("bad \\u escape");
          unsigned code = static_cast<unsigned>(std::stoul(text_.substr(pos_, 4), nullptr, 16));
          pos_ += 4;
          // UTF-8; surrogate pairs (non-BMP characters) are not expected in a manifest.
          if (code < 0x80) {
            out += static_cast<char>(code);
          } else if (code < 0x800) {
            out += static_cast<char>(0xC0 | (code >> 6));
            out += static_cast<char>(0x80 | (code & 0x3F));
          } else {
            out += static_cast<char>(0xE0 | (code >> 12));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code & 0x3F));
          }
          break;
        }
        default: out += e;  // \" \\ \/
      }
    }
    if (pos_ >= text_.size()) fail("unterminated string");
    ++pos_;
    return out;
  }

  const std::string& text_;
  std::string source_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------- SHA-256
// FIPS 180-4; the manifest records each bundled file's digest.

class Sha256 {
 public:
  Sha256() : state_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19} {}

  void update(const unsigned char* data, size_t n) {
    length_ += n;
    while (n > 0) {
      size_t take = std::min(n, sizeof(block_) - used_);
      std::memcpy(block_ + used_, data, take);
      used_ += take, data += take, n -= take;
      if (used_ == sizeof(block_)) compress(), used_ = 0;
    }
  }

  std::string hex_digest() {
    uint64_t bits = length_ * 8;
    unsigned char pad = 0x80;
    update(&pad, 1);
    unsigned char zero = 0;
    while (used_ != 56) update(&zero, 1);
    for (int i = 7; i >= 0; --i) {
      unsigned char b = static_cast<unsigned char>(bits >> (8 * i));
      update(&b, 1);
    }
    char hex[65];
    for (int i = 0; i < 8; ++i) std::snprintf(hex + 8 * i, 9, "%08x", state_[i]);
    return std::string(hex, 64);
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void compress() {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      w[i] = (uint32_t(block_[4 * i]) << 24) | (uint32_t(block_[4 * i + 1]) << 16) |
             (uint32_t(block_[4 * i + 2]) << 8) | uint32_t(block_[4 * i + 3]);
    }
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
    uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    state_[0] += a, state_[1] += b, state_[2] += c, state_[3] += d;
    state_[4] += e, state_[5] += f, state_[6] += g, state_[7] += h;
  }

  uint32_t state_[8];
  unsigned char block_[64] = {};
  size_t used_ = 0;
  uint64_t length_ = 0;
};

inline bool file_exists(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return f.good();
}

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

/*! \brief (size in bytes, sha256 hex) of a file. */
inline std::pair<uint64_t, std::string> size_and_sha256(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot read " + path);
  Sha256 hash;
  std::vector<unsigned char> buffer(1 << 20);
  uint64_t size = 0;
  while (f) {
    f.read(reinterpret_cast<char*>(buffer.data()), static_cast<std::streamsize>(buffer.size()));
    size_t n = static_cast<size_t>(f.gcount());
    hash.update(buffer.data(), n);
    size += n;
  }
  return {size, hash.hex_digest()};
}

inline uint64_t file_size(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw Error("cannot read " + path);
  return static_cast<uint64_t>(f.tellg());
}

inline std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

/*! \brief The CPUs this process may run on: its affinity mask, as taskset or a container's cpuset leave it. */
inline std::vector<unsigned> usable_cpus() {
  std::vector<unsigned> cpus;
#ifdef __linux__
  cpu_set_t mask;
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0) {
    for (unsigned cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &mask)) cpus.push_back(cpu);
    }
  }
#endif
  if (cpus.empty()) {
    for (unsigned cpu = 0; cpu < std::max(1u, std::thread::hardware_concurrency()); ++cpu) cpus.push_back(cpu);
  }
  return cpus;
}

/*!
 * \brief Cores this process may run on, each hyper-threaded sibling counted once
 *        (the same count as Python's ``tvm_shuffle.runtime.physical_cores``).
 *
 * TVM's own default pool is half the logical CPUs on x86 (it assumes two
 * hyper-threads per core): one core of two on a VM without hyper-threading.
 */
inline int physical_cores() {
  std::set<std::string> cores;
  for (unsigned cpu : usable_cpus()) {
    const std::string topology = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream package(topology + "physical_package_id"), core(topology + "core_id");
    std::string p, c;
    // No sysfs topology (containers, other OSes): one core per CPU.
    cores.insert((package >> p) && (core >> c) ? p + "/" + c : "cpu/" + std::to_string(cpu));
  }
  return std::max(1, static_cast<int>(cores.size()));
}

/*! \brief TVM_NUM_THREADS when set, else physical_cores(). */
inline int default_threads() {
  const char* env = std::getenv("TVM_NUM_THREADS");
  const int n = env ? std::atoi(env) : 0;
  return n > 0 ? n : physical_cores();
}

inline void export_thread_settings(int threads) {
  setenv("TVM_NUM_THREADS", std::to_string(threads).c_str(), 1);
  // TVM pins each worker to a core; a launch then waits whenever another process holds that core,
  // which on a busy machine costs far more than pinning gains. 0 = keep the app's choice.
  setenv("TVM_BIND_THREADS", "0", 0);
}

}  // namespace detail

/*! \brief "1x3x224x224" */
inline std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s;
}

/*! \brief What a bundle's manifest.json says about it (the fields this API uses). */
struct Manifest {
  struct File {
    std::string path;  // relative to the bundle directory
    uint64_t size = 0;
    std::string sha256;
  };

  std::string model;
  std::string library;      // model.so
  std::string target_name;  // e.g. x86, arm-rpi4, cuda-sm_80
  std::string family;       // x86 | arm | cuda
  std::string arch;         // x86_64 | aarch64: the architecture the library and runtime are built for
  std::string input_name;
  std::vector<int64_t> input_shape;
  std::vector<std::vector<int64_t>> output_shapes;
  std::vector<std::string> runtime_libraries;  // in load order, relative to the bundle directory
  std::vector<File> files;                     // every bundled file but manifest.json

  /*! \brief Parse ``dir``/manifest.json; throws Error when it is missing or malformed. */
  static Manifest Read(const std::string& dir) {
    const std::string path = dir + "/manifest.json";
    if (!detail::file_exists(path)) {
      throw Error("no manifest.json in " + dir +
                  ": is this a tvm_shuffle bundle (the --out directory of compile/tune)?");
    }
    std::string text = detail::read_text(path);
    detail::Json root = detail::JsonParser(text, path).parse();
    auto field = [&path](const detail::Json& obj, const char* key, detail::Json::Type type) -> const detail::Json& {
      const detail::Json* v = obj.find(key);
      if (v == nullptr || v->type != type) {
        throw Error(path + " is not a valid tvm_shuffle manifest: field '" + key +
                    "' is missing or has the wrong type");
      }
      return *v;
    };
    auto shape = [&](const detail::Json& obj) {
      std::vector<int64_t> dims;
      for (const auto& d : field(obj, "shape", detail::Json::Type::kArray).array) dims.push_back(int64_t(d.number));
      if (field(obj, "dtype", detail::Json::Type::kString).string != "float32") {
        throw Error(path + ": only float32 inputs and outputs are supported by this API");
      }
      return dims;
    };
    using T = detail::Json::Type;
    Manifest m;
    m.model = field(root, "model", T::kString).string;
    m.library = field(root, "library", T::kString).string;
    const detail::Json& target = field(root, "target", T::kObject);
    m.target_name = field(target, "name", T::kString).string;
    m.family = field(target, "family", T::kString).string;
    m.arch = field(target, "arch", T::kString).string;
    const auto& inputs = field(root, "inputs", T::kArray).array;
    if (inputs.size() != 1) throw Error(path + ": this API runs models with exactly one input");
    m.input_name = field(inputs[0], "name", T::kString).string;
    m.input_shape = shape(inputs[0]);
    for (const auto& out : field(root, "outputs", T::kArray).array) m.output_shapes.push_back(shape(out));
    if (const detail::Json* bundle = root.find("bundle")) {
      for (const auto& lib : field(*bundle, "runtime_libraries", T::kArray).array) {
        m.runtime_libraries.push_back(lib.string);
      }
      for (const auto& kv : field(*bundle, "files", T::kObject).object) {
        m.files.push_back({kv.first, uint64_t(field(kv.second, "size", T::kNumber).number),
                           field(kv.second, "sha256", T::kString).string});
      }
    }
    return m;
  }

  const File* find_file(const std::string& relative) const {
    for (const auto& f : files) {
      if (f.path == relative) return &f;
    }
    return nullptr;
  }

  int64_t input_size() const {
    int64_t n = 1;
    for (int64_t d : input_shape) n *= d;
    return n;
  }
};

/*!
 * \brief A compiled model loaded from a bundle directory.
 *
 * Runs on the CPU, or on GPU 0 for a bundle whose target family is cuda.
 * CPU kernels use ``threads`` threads (default: TVM_NUM_THREADS, else one per
 * physical core); the pool is the process's, so the last Model sets it.
 * Not thread-safe: use one Model per thread.
 */
class Model {
 public:
  explicit Model(const std::string& bundle_dir, int threads = 0)
      : dir_(bundle_dir), manifest_(Manifest::Read(bundle_dir)) {
    check_arch();
    check_files();
    load_runtime();
    load_library();
    threads_ = threads > 0 ? threads : detail::default_threads();
    // Every parallel kernel launch reads TVM_NUM_THREADS; without it TVM counts
    // the logical CPUs (a sysfs read per launch) and halves them, which on a
    // 2-vCPU VM runs every kernel serially whatever the pool's size.
    detail::export_thread_settings(threads_);
    constexpr int kAffinityBig = 1;  // TVM's default mode: workers on the fastest cores
    tvm::ffi::Function::GetGlobalRequired("runtime.config_threadpool")(kAffinityBig, threads_);
  }

  /*! \brief Size of TVM's CPU thread pool. */
  int threads() const { return threads_; }

  const Manifest& manifest() const { return manifest_; }
  const std::vector<int64_t>& input_shape() const { return manifest_.input_shape; }
  /*! \brief Number of floats run() expects. */
  size_t input_size() const { return static_cast<size_t>(manifest_.input_size()); }
  /*! \brief kDLCPU or kDLCUDA. */
  DLDeviceType device_type() const { return device_.device_type; }

  /*! \brief Run on ``count`` floats in NCHW order (the manifest's input shape); outputs are host copies. */
  std::vector<Output> run(const float* data, size_t count) {
    if (count != input_size()) {
      throw Error("input has " + std::to_string(count) + " floats; model " + manifest_.model + " expects " +
                  shape_string(manifest_.input_shape) + " = " + std::to_string(input_size()));
    }
    try {
      void* host = static_cast<void*>(const_cast<float*>(data));  // only read from
      copy_from_bytes_(input_, host, static_cast<int64_t>(count * sizeof(float)));
      tvm::ffi::Any result = main_(input_);
      std::vector<Output> outputs;
      if (auto tensor = result.as<tvm::ffi::Tensor>()) {
        outputs.push_back(to_host(*tensor));
      } else {
        for (const tvm::ffi::Any& item : result.cast<tvm::ffi::Array<tvm::ffi::Any>>()) {
          outputs.push_back(to_host(item.cast<tvm::ffi::Tensor>()));
        }
      }
      return outputs;
    } catch (const tvm::ffi::Error& err) {
      throw Error("running " + manifest_.model + " failed: " + err.kind() + ": " + detail::first_line(err.message()));
    }
  }

  std::vector<Output> run(const std::vector<float>& input) { return run(input.data(), input.size()); }

 private:
  std::string path(const std::string& relative) const { return dir_ + "/" + relative; }

  void check_arch() const {
    if (manifest_.arch != detail::kCompiledArch) {
      throw Error("bundle " + dir_ + " was built for " + manifest_.arch + " (target " + manifest_.target_name +
                  "), but this program was compiled for " + detail::kCompiledArch +
                  ": compile the model with a " + detail::kCompiledArch + " target, or build this program for " +
                  manifest_.arch);
    }
  }

  // Cheap checks first (sizes), then model.so's sha256, which is what changes
  // when a model is rebuilt without its manifest.
  void check_files() const {
    if (manifest_.runtime_libraries.empty()) {
      throw Error(dir_ + "/manifest.json lists no runtime libraries: rebuild the bundle with tvm_shuffle.compile");
    }
    for (const std::string& lib : manifest_.runtime_libraries) {
      if (!detail::file_exists(path(lib))) {
        throw Error("missing runtime library " + path(lib) + ": copy the bundle's lib/ folder together with " +
                    manifest_.library);
      }
      const Manifest::File* entry = manifest_.find_file(lib);
      if (entry != nullptr && detail::file_size(path(lib)) != entry->size) {
        throw Error("runtime library " + path(lib) + " does not match manifest.json (size " +
                    std::to_string(detail::file_size(path(lib))) + ", manifest says " + std::to_string(entry->size) +
                    "): it comes from another TVM build");
      }
    }
    const std::string library = path(manifest_.library);
    if (!detail::file_exists(library)) {
      throw Error(dir_ + "/manifest.json names " + manifest_.library + ", which is not in " + dir_);
    }
    const Manifest::File* entry = manifest_.find_file(manifest_.library);
    if (entry == nullptr) throw Error(dir_ + "/manifest.json has no checksum for " + manifest_.library);
    auto actual = detail::size_and_sha256(library);
    if (actual.first != entry->size || actual.second != entry->sha256) {
      throw Error(library + " does not match manifest.json (sha256 " + actual.second.substr(0, 12) +
                  ", manifest says " + entry->sha256.substr(0, 12) +
                  "): the library was rebuilt or replaced without its manifest; copy both from the same build");
    }
  }

  // libtvm_ffi.so is linked into the program; dlopen()ing the bundle's copy by
  // path would load a second FFI registry, so it is only checked, not opened.
  void load_runtime() const {
    for (const std::string& lib : manifest_.runtime_libraries) {
      if (lib.find("libtvm_ffi.") != std::string::npos) continue;
      if (lib.find("libcudart.") != std::string::npos) continue;  // a dependency of libtvm_runtime_cuda.so
      if (dlopen(path(lib).c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
        std::string why = dlerror();
        std::string hint = why.find("libcuda.so") != std::string::npos
                               ? " (the NVIDIA driver is not installed: a CUDA bundle needs a GPU machine)"
                               : "";
        throw Error("cannot load runtime library " + path(lib) + ": " + why + hint);
      }
    }
  }

  void load_library() {
    using tvm::ffi::Function;
    const std::string library = path(manifest_.library);
    try {
      tvm::ffi::Module module = tvm::ffi::Module::LoadFromFile(library);
      tvm::ffi::Module vm = function(module, "vm_load_executable")().cast<tvm::ffi::Module>();
      device_ = DLDevice{manifest_.family == "cuda" ? kDLCUDA : kDLCPU, 0};
      constexpr int kPooledAllocator = 2;
      // The compute device, then the host device the VM keeps shapes and constants on.
      function(vm, "vm_initialization")(static_cast<int>(device_.device_type), device_.device_id, kPooledAllocator,
                                        static_cast<int>(kDLCPU), 0, kPooledAllocator);
      main_ = function(vm, "main");
      vm_ = vm;
      copy_from_bytes_ = Function::GetGlobalRequired("runtime.TVMTensorCopyFromBytes");
      copy_to_bytes_ = Function::GetGlobalRequired("runtime.TVMTensorCopyToBytes");
      alloc_ = Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
      input_ = alloc_tensor(manifest_.input_shape);
    } catch (const tvm::ffi::Error& err) {
      throw Error("cannot load " + library + ": " + err.kind() + ": " + detail::first_line(err.message()));
    }
  }

  tvm::ffi::Function function(const tvm::ffi::Module& module, const char* name) const {
    tvm::ffi::Optional<tvm::ffi::Function> f = module->GetFunction(name);
    if (!f.has_value()) {
      throw Error(path(manifest_.library) + " has no function '" + name +
                  "': it is not a Relax VM library made by tvm_shuffle");
    }
    return f.value();
  }

  tvm::ffi::Tensor alloc_tensor(const std::vector<int64_t>& shape) const {
    tvm::ffi::Optional<tvm::ffi::String> no_scope;
    return alloc_(tvm::ffi::Shape(shape), DLDataType{kDLFloat, 32, 1}, device_, no_scope).cast<tvm::ffi::Tensor>();
  }

  Output to_host(const tvm::ffi::Tensor& tensor) const {
    if (tensor.dtype().code != kDLFloat || tensor.dtype().bits != 32) {
      throw Error(manifest_.model + " returned a non-float32 output; this API reads float32 only");
    }
    Output out;
    for (int64_t d : tensor.shape()) out.shape.push_back(d);
    int64_t n = 1;
    for (int64_t d : out.shape) n *= d;
    out.data.resize(static_cast<size_t>(n));
    copy_to_bytes_(tensor, static_cast<void*>(out.data.data()), static_cast<int64_t>(n * sizeof(float)));
    return out;
  }

  std::string dir_;
  Manifest manifest_;
  DLDevice device_{kDLCPU, 0};
  int threads_ = 1;
  tvm::ffi::Optional<tvm::ffi::Module> vm_;  // keeps the VM alive beside main_
  tvm::ffi::Function main_, copy_from_bytes_, copy_to_bytes_, alloc_;
  tvm::ffi::Tensor input_;
};

}  // namespace tvm_shuffle

#endif  // TVM_SHUFFLE_H_
