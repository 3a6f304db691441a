// One RPC session of an emulated board, run under qemu-user.
//
// tvm_shuffle.tuning.emulated_device registers with the tracker and accepts
// the client (both in x86 Python), then starts this program, cross-built
// against the aarch64 TVM runtime from the wheels, as
//
//     qemu-aarch64 -L /usr/aarch64-linux-gnu rpc_server FD WORKDIR
//
// where FD is the connected client socket after the handshake. The runtime's
// "rpc.ServerLoop" serves it; upload / download / remove come with the
// runtime and need "tvm.rpc.server.workpath". What TVM's Python server adds
// is here too: "tvm.rpc.server.load_module" (load an uploaded library) and
// "tvm.contrib.random.random_fill_for_measure" (MetaSchedule's input filler,
// which lives in libtvm_runtime_extra.so, a library we do not ship). And
// "tvm_shuffle.emulated" tells the tuner its timings are meaningless.

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/tensor.h>  // lets typed functions take DLTensor*
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>

namespace {

void FillRandom(DLTensor* tensor) {
  int64_t count = 1;
  for (int i = 0; i < tensor->ndim; ++i) count *= tensor->shape[i];
  char* data = static_cast<char*>(tensor->data) + tensor->byte_offset;
  std::mt19937 engine(42);
  if (tensor->dtype.code == kDLFloat && tensor->dtype.bits == 32) {
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    float* values = reinterpret_cast<float*>(data);
    for (int64_t i = 0; i < count * tensor->dtype.lanes; ++i) values[i] = dist(engine);
    return;
  }
  // Other types only need defined bytes for timing.
  int64_t bytes = count * tensor->dtype.lanes * ((tensor->dtype.bits + 7) / 8);
  for (int64_t i = 0; i < bytes; ++i) data[i] = static_cast<char>(engine() & 0x7f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: rpc_server SOCKET_FD WORKDIR (started by tvm_shuffle.tuning.emulated_device)\n";
    return 2;
  }
  const int64_t fd = std::strtoll(argv[1], nullptr, 10);
  const std::string workdir = argv[2];
  namespace ffi = tvm::ffi;

  ffi::Function::SetGlobal(
      "tvm.rpc.server.workpath",
      ffi::Function::FromTyped([workdir](ffi::String path) -> ffi::String {
        return ffi::String(workdir + "/" + std::string(path));
      }),
      true);
  ffi::Function::SetGlobal(
      "tvm.rpc.server.load_module",
      ffi::Function::FromTyped([workdir](ffi::String name) -> ffi::Module {
        return ffi::Module::LoadFromFile(ffi::String(workdir + "/" + std::string(name)));
      }),
      true);
  ffi::Function::SetGlobal("tvm_shuffle.emulated",
                           ffi::Function::FromTyped([]() -> ffi::String { return "qemu-aarch64"; }), true);
  if (!ffi::Function::GetGlobal("tvm.contrib.random.random_fill_for_measure")) {
    ffi::Function::SetGlobal("tvm.contrib.random.random_fill_for_measure",
                             ffi::Function::FromTyped([](DLTensor* tensor) { FillRandom(tensor); }));
  }
  ffi::Function::GetGlobalRequired("rpc.ServerLoop")(fd);
  return 0;
}
