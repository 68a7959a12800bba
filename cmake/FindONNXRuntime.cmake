# FindONNXRuntime: the ONNX Runtime C/C++ headers and shared library.
#
# Imported target: ONNXRuntime::ONNXRuntime
# Result variables: ONNXRuntime_FOUND, ONNXRuntime_INCLUDE_DIR, ONNXRuntime_LIBRARY, ONNXRuntime_VERSION
#
# Where it looks, first match wins:
#   1. ONNXRUNTIME_ROOT (CMake or environment variable): a user's own install (include/ and lib/ below it,
#      e.g. an unpacked onnxruntime-linux-x64 release, or /usr for a distribution package).
#   2. ONNXRUNTIME_INCLUDE_DIR / ONNXRUNTIME_LIBRARY given explicitly.
#   3. The library from the onnxruntime pip wheel of the active Python (Python3_EXECUTABLE, else
#      $VIRTUAL_ENV/bin/python, else <source>/.venv/bin/python, else python3 on PATH), so that the C++ and the
#      Python runtimes run the very same ONNX Runtime build; the wheel ships no headers, so they come from
#      MEDFM_ORT_HEADERS_DIR (filled by scripts/setup_onnxruntime_headers.sh) or the system include path.
#   4. A system library (e.g. Debian trixie's libonnxruntime-dev).
include(FindPackageHandleStandardArgs)

set(_ort_root "${ONNXRUNTIME_ROOT}")
if(NOT _ort_root AND DEFINED ENV{ONNXRUNTIME_ROOT})
  set(_ort_root "$ENV{ONNXRUNTIME_ROOT}")
endif()

if(_ort_root)
  find_path(ONNXRuntime_INCLUDE_DIR onnxruntime_cxx_api.h
    PATHS "${_ort_root}/include" "${_ort_root}/include/onnxruntime" "${_ort_root}/include/onnxruntime/core/session"
    NO_DEFAULT_PATH)
  find_library(ONNXRuntime_LIBRARY NAMES onnxruntime libonnxruntime.so.1
    PATHS "${_ort_root}/lib" "${_ort_root}/lib64" "${_ort_root}/lib/x86_64-linux-gnu" "${_ort_root}/lib/aarch64-linux-gnu"
    NO_DEFAULT_PATH)
else()
  if(ONNXRUNTIME_INCLUDE_DIR)
    set(ONNXRuntime_INCLUDE_DIR "${ONNXRUNTIME_INCLUDE_DIR}" CACHE PATH "ONNX Runtime headers" FORCE)
  endif()
  if(ONNXRUNTIME_LIBRARY)
    set(ONNXRuntime_LIBRARY "${ONNXRUNTIME_LIBRARY}" CACHE FILEPATH "ONNX Runtime library" FORCE)
  endif()

  if(NOT ONNXRuntime_LIBRARY)
    set(_ort_python "${Python3_EXECUTABLE}")
    if(NOT _ort_python AND DEFINED ENV{VIRTUAL_ENV} AND EXISTS "$ENV{VIRTUAL_ENV}/bin/python")
      set(_ort_python "$ENV{VIRTUAL_ENV}/bin/python")
    endif()
    if(NOT _ort_python AND EXISTS "${PROJECT_SOURCE_DIR}/.venv/bin/python")
      set(_ort_python "${PROJECT_SOURCE_DIR}/.venv/bin/python")
    endif()
    if(NOT _ort_python)
      find_program(_ort_python NAMES python3 python)
    endif()
    if(_ort_python)
      execute_process(
        COMMAND "${_ort_python}" -c
          "import glob, os, onnxruntime as o; d = os.path.join(os.path.dirname(o.__file__), 'capi'); libs = sorted(glob.glob(os.path.join(d, 'libonnxruntime.so.*')) + glob.glob(os.path.join(d, 'libonnxruntime*.dylib'))); print(libs[-1] if libs else ''); print(o.__version__)"
        OUTPUT_VARIABLE _ort_py_out ERROR_QUIET RESULT_VARIABLE _ort_py_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
      if(_ort_py_rc EQUAL 0)
        string(REPLACE "\n" ";" _ort_py_out "${_ort_py_out}")
        list(GET _ort_py_out 0 _ort_wheel_lib)
        list(GET _ort_py_out 1 _ort_wheel_version)
        if(_ort_wheel_lib AND EXISTS "${_ort_wheel_lib}")
          set(ONNXRuntime_LIBRARY "${_ort_wheel_lib}" CACHE FILEPATH "ONNX Runtime library (from the pip wheel of ${_ort_python})")
          set(ONNXRuntime_VERSION "${_ort_wheel_version}")
          message(STATUS "ONNX Runtime ${_ort_wheel_version} library from the pip wheel of ${_ort_python}")
        endif()
      endif()
    endif()
  endif()
  find_library(ONNXRuntime_LIBRARY NAMES onnxruntime)

  if(NOT MEDFM_ORT_HEADERS_DIR)
    set(MEDFM_ORT_HEADERS_DIR "${PROJECT_SOURCE_DIR}/build/third_party/onnxruntime-headers")
  endif()
  find_path(ONNXRuntime_INCLUDE_DIR onnxruntime_cxx_api.h
    HINTS "${MEDFM_ORT_HEADERS_DIR}/include"
    PATH_SUFFIXES onnxruntime onnxruntime/core/session)
endif()

if(ONNXRuntime_INCLUDE_DIR AND NOT ONNXRuntime_VERSION AND ONNXRuntime_LIBRARY MATCHES "\\.so\\.([0-9]+\\.[0-9]+\\.[0-9]+)$")
  set(ONNXRuntime_VERSION "${CMAKE_MATCH_1}")
endif()

find_package_handle_standard_args(ONNXRuntime
  REQUIRED_VARS ONNXRuntime_LIBRARY ONNXRuntime_INCLUDE_DIR
  VERSION_VAR ONNXRuntime_VERSION
  REASON_FAILURE_MESSAGE
    "Pass -DONNXRUNTIME_ROOT=<an onnxruntime install>, or install the onnxruntime wheel in the Python given by -DPython3_EXECUTABLE and run scripts/setup_onnxruntime_headers.sh for the headers.")

# The wheel ships libonnxruntime.so.1.32.0 but no libonnxruntime.so.1 link, while the library's SONAME (what a
# linked program asks the loader for) is libonnxruntime.so.1. Give the loader that name through a link in the
# build tree; ONNXRuntime_RUNTIME_FILE/ONNXRuntime_SONAME let the install step ship the library under it.
set(ONNXRuntime_LINK_LOCATION "${ONNXRuntime_LIBRARY}")
if(ONNXRuntime_FOUND)
  get_filename_component(_ort_real "${ONNXRuntime_LIBRARY}" REALPATH)
  get_filename_component(_ort_dir "${ONNXRuntime_LIBRARY}" DIRECTORY)
  get_filename_component(_ort_name "${_ort_real}" NAME)
  if(_ort_name MATCHES "^(libonnxruntime\\.so\\.[0-9]+)\\.[0-9]+\\.[0-9]+$")
    set(ONNXRuntime_SONAME "${CMAKE_MATCH_1}")
    set(ONNXRuntime_RUNTIME_FILE "${_ort_real}")
    if(NOT EXISTS "${_ort_dir}/${ONNXRuntime_SONAME}")
      set(_ort_link_dir "${CMAKE_BINARY_DIR}/onnxruntime-lib")
      file(MAKE_DIRECTORY "${_ort_link_dir}")
      file(CREATE_LINK "${_ort_real}" "${_ort_link_dir}/${ONNXRuntime_SONAME}" SYMBOLIC)
      set(ONNXRuntime_LINK_LOCATION "${_ort_link_dir}/${ONNXRuntime_SONAME}")
    endif()
  endif()
endif()

if(ONNXRuntime_FOUND AND NOT TARGET ONNXRuntime::ONNXRuntime)
  add_library(ONNXRuntime::ONNXRuntime SHARED IMPORTED)
  set_target_properties(ONNXRuntime::ONNXRuntime PROPERTIES
    IMPORTED_LOCATION "${ONNXRuntime_LINK_LOCATION}"
    INTERFACE_INCLUDE_DIRECTORIES "${ONNXRuntime_INCLUDE_DIR}")
endif()
mark_as_advanced(ONNXRuntime_INCLUDE_DIR ONNXRuntime_LIBRARY)
