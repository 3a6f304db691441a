# Cross-compile the example for 64-bit ARM Linux with Debian/Ubuntu's toolchain
# (apt-get install g++-aarch64-linux-gnu). CMakeLists.txt uses this file by
# itself for an aarch64 bundle; run the result on the board, or here with
#   qemu-aarch64 -L /usr/aarch64-linux-gnu build/classify <bundle> image.ppm
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

find_program(_aarch64_cxx aarch64-linux-gnu-g++)
if(NOT _aarch64_cxx)
  message(FATAL_ERROR "aarch64-linux-gnu-g++ not found: apt-get install g++-aarch64-linux-gnu")
endif()
set(CMAKE_CXX_COMPILER "${_aarch64_cxx}")

set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
