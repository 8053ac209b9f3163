# Installation and packaging: libsigattn.so (soname with the major version, only the API
# exported), optionally libsigattn.a, the public headers, the `sigattn` command line, the shipped
# data under share/sigattn, a CMake package (sigattn::sigattn) and a pkg-config file.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

option(SIGATTN_BUILD_STATIC
       "Also build and install the static libsigattn.a, imported as sigattn::sigattn_static" OFF)

set(SIGATTN_INSTALL_DATADIR ${CMAKE_INSTALL_DATADIR}/sigattn)
set(SIGATTN_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/sigattn)
set(SIGATTN_PUBLIC_INCLUDES $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
    $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/generated/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)

# The runtime finds share/sigattn relative to the binary its code was loaded from; in the build
# tree it falls back to the source tree's data/.
file(RELATIVE_PATH lib_to_data /${CMAKE_INSTALL_LIBDIR} /${SIGATTN_INSTALL_DATADIR})
file(RELATIVE_PATH bin_to_data /${CMAKE_INSTALL_BINDIR} /${SIGATTN_INSTALL_DATADIR})
set_property(SOURCE ${PROJECT_SOURCE_DIR}/runtime/install_paths.cpp APPEND PROPERTY
  COMPILE_DEFINITIONS SIGATTN_LIB_TO_DATA_DIR="${lib_to_data}" SIGATTN_BIN_TO_DATA_DIR="${bin_to_data}"
  SIGATTN_BUILD_DIR="${PROJECT_BINARY_DIR}" SIGATTN_SOURCE_DATA_DIR="${PROJECT_SOURCE_DIR}/data")

target_include_directories(sigattn INTERFACE ${SIGATTN_PUBLIC_INCLUDES})
set(SIGATTN_VERSION_SCRIPT ${PROJECT_SOURCE_DIR}/cmake/sigattn.map)
target_link_options(sigattn PRIVATE -Wl,--version-script=${SIGATTN_VERSION_SCRIPT})
set_property(TARGET sigattn APPEND PROPERTY LINK_DEPENDS ${SIGATTN_VERSION_SCRIPT})
install(TARGETS sigattn EXPORT sigattnTargets LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(EXPORT sigattnTargets NAMESPACE sigattn:: DESTINATION ${SIGATTN_INSTALL_CMAKEDIR})

if(SIGATTN_BUILD_STATIC)
  add_library(sigattn_static STATIC $<TARGET_OBJECTS:sigattn_core>)
  set_target_properties(sigattn_static PROPERTIES OUTPUT_NAME sigattn EXPORT_NAME sigattn_static)
  target_include_directories(sigattn_static INTERFACE ${SIGATTN_PUBLIC_INCLUDES})
  target_link_libraries(sigattn_static PRIVATE fmt::fmt $<BUILD_INTERFACE:${XXHASH_LIBRARY}>
                        $<INSTALL_INTERFACE:xxhash> ${CMAKE_DL_LIBS} Threads::Threads
                        SQLite::SQLite3)
  target_link_options(sigattn_static INTERFACE ${SIGATTN_LINK_ONLINE_TUNER})
  install(TARGETS sigattn_static EXPORT sigattnStaticTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(EXPORT sigattnStaticTargets NAMESPACE sigattn:: DESTINATION ${SIGATTN_INSTALL_CMAKEDIR})
endif()

install(TARGETS sigattn_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${PROJECT_SOURCE_DIR}/include/sigattn/sigattn.h
              ${PROJECT_SOURCE_DIR}/include/sigattn/sigattn.hpp
              ${PROJECT_SOURCE_DIR}/include/sigattn/export.h
              ${PROJECT_BINARY_DIR}/generated/include/sigattn/version.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/sigattn)

# The shipped tuning documents (data/*.json); the directory is created even while there are none.
file(GLOB SIGATTN_SHIPPED_DATA CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/data/*.json)
install(DIRECTORY DESTINATION ${SIGATTN_INSTALL_DATADIR})
install(FILES ${SIGATTN_SHIPPED_DATA} DESTINATION ${SIGATTN_INSTALL_DATADIR})

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/sigattnConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/generated/sigattnConfig.cmake
                              INSTALL_DESTINATION ${SIGATTN_INSTALL_CMAKEDIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/generated/sigattnConfigVersion.cmake
                                 COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/generated/sigattnConfig.cmake
              ${PROJECT_BINARY_DIR}/generated/sigattnConfigVersion.cmake
        DESTINATION ${SIGATTN_INSTALL_CMAKEDIR})

file(RELATIVE_PATH SIGATTN_PC_PREFIX_FROM_PCFILEDIR /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
configure_file(${PROJECT_SOURCE_DIR}/cmake/sigattn.pc.in ${PROJECT_BINARY_DIR}/generated/sigattn.pc
               @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/generated/sigattn.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
