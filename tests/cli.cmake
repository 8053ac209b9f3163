# Tests of the `sigattn` command line (label cpu). Included by tests/CMakeLists.txt, this file adds
# the tests; run with `cmake -P` it is the checker each test uses: it runs PROGRAM with ARGS
# ("|"-separated) and checks the exit status, regular expressions on stdout and stderr, and that
# stdout is a JSON value of the expected type.
if(CMAKE_SCRIPT_MODE_FILE)
  string(REPLACE "|" ";" arg_list "${ARGS}")
  execute_process(COMMAND ${PROGRAM} ${arg_list} RESULT_VARIABLE status OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  string(CONCAT transcript "command: ${PROGRAM} ${ARGS}\nexit status: ${status}\n"
         "stdout:\n${out}\nstderr:\n${err}")
  if(NOT status STREQUAL EXPECT_EXIT)
    message(FATAL_ERROR "expected exit status ${EXPECT_EXIT}\n${transcript}")
  endif()
  # Trailing newlines are stripped, so "$" in a pattern means the end of the last line.
  string(STRIP "${out}" out)
  string(STRIP "${err}" err)
  if(DEFINED EXPECT_STDOUT AND NOT out MATCHES "${EXPECT_STDOUT}")
    message(FATAL_ERROR "stdout does not match '${EXPECT_STDOUT}'\n${transcript}")
  endif()
  if(DEFINED REFUSE_STDOUT AND out MATCHES "${REFUSE_STDOUT}")
    message(FATAL_ERROR "stdout matches '${REFUSE_STDOUT}', which it must not\n${transcript}")
  endif()
  if(DEFINED EXPECT_STDERR AND NOT err MATCHES "${EXPECT_STDERR}")
    message(FATAL_ERROR "stderr does not match '${EXPECT_STDERR}'\n${transcript}")
  endif()
  if(DEFINED EXPECT_ABSENT AND EXISTS "${EXPECT_ABSENT}")
    message(FATAL_ERROR "${EXPECT_ABSENT} exists, but the command must not create it\n${transcript}")
  endif()
  if(DEFINED EXPECT_JSON)
    string(JSON json_type ERROR_VARIABLE json_error TYPE "${out}")
    if(NOT json_type STREQUAL EXPECT_JSON)
      message(FATAL_ERROR "stdout is not a JSON ${EXPECT_JSON}: ${json_error}\n${transcript}")
    endif()
  endif()
  return()
endif()

# cli_test(NAME EXIT code ARGS arg... [STDOUT regex] [NOT_STDOUT regex] [STDERR regex]
#          [JSON OBJECT|ARRAY] [ABSENT path] [ENVIRONMENT var=value] [TIMEOUT seconds])
# NOT_STDOUT: a pattern stdout must not match anywhere (e.g. a listing's "spills" lines).
# ABSENT: a file the command must not have created (e.g. a database after a usage error).
function(cli_test name)
  cmake_parse_arguments(PARSE_ARGV 1 CLI "" "EXIT;STDOUT;NOT_STDOUT;STDERR;JSON;TIMEOUT;ABSENT"
                        "ARGS;ENVIRONMENT")
  list(JOIN CLI_ARGS "|" joined_args)
  set(checks -DPROGRAM=$<TARGET_FILE:sigattn_cli> "-DARGS=${joined_args}"
             -DEXPECT_EXIT=${CLI_EXIT})
  if(DEFINED CLI_STDOUT)
    list(APPEND checks "-DEXPECT_STDOUT=${CLI_STDOUT}")
  endif()
  if(DEFINED CLI_NOT_STDOUT)
    list(APPEND checks "-DREFUSE_STDOUT=${CLI_NOT_STDOUT}")
  endif()
  if(DEFINED CLI_STDERR)
    list(APPEND checks "-DEXPECT_STDERR=${CLI_STDERR}")
  endif()
  if(DEFINED CLI_JSON)
    list(APPEND checks -DEXPECT_JSON=${CLI_JSON})
  endif()
  if(DEFINED CLI_ABSENT)
    list(APPEND checks -DEXPECT_ABSENT=${CLI_ABSENT})
  endif()
  add_test(NAME cli_${name} COMMAND ${CMAKE_COMMAND} ${checks} -P ${CMAKE_CURRENT_LIST_FILE})
  # Each test has its own database under the build tree unless it names another; the user's
  # database is never touched.
  set_tests_properties(cli_${name} PROPERTIES LABELS cpu ENVIRONMENT
                       "SIGATTN_DB=${CMAKE_CURRENT_BINARY_DIR}/cli_db/${name}.db;${CLI_ENVIRONMENT}")
  if(DEFINED CLI_TIMEOUT)
    set_tests_properties(cli_${name} PROPERTIES TIMEOUT ${CLI_TIMEOUT})
  endif()
endfunction()

set(cli_spec fwd.fp16.d64.dense.nomask.nosmod.fast.anylen)
string(REPLACE "." "\\." cli_version_regex "${PROJECT_VERSION}")
set(cli_summary_ok "compiled [0-9]+, from cache [0-9]+, failed 0$")

cli_test(version EXIT 0 ARGS --version STDOUT "^${cli_version_regex}$")
cli_test(no_command_is_usage_error EXIT 2 STDERR "subcommand")
cli_test(unknown_command_is_named EXIT 2 ARGS frobnicate
         STDERR "unknown command 'frobnicate' \\(commands: doctor, gen, compile, db, tune\\)")
cli_test(doctor EXIT 0 ARGS doctor STDOUT "^sigattn ${cli_version_regex}.*NVRTC: (loaded|not available)")
cli_test(doctor_json EXIT 0 ARGS doctor --json JSON OBJECT)

cli_test(gen_default_tile EXIT 0 ARGS gen fwd.bf16.d128.dense.causal.nosmod.fast.anylen
         STDOUT "fwd_sm90_kernel")
cli_test(gen_explicit_tile EXIT 0 ARGS gen --arch sm_80 ${cli_spec}/sm80.m64n64w4s2
         STDOUT "fwd_sm80_kernel")
# The example `gen --help` gives, with its tile, works on every architecture.
set(cli_gen_example fwd.bf16.d128.dense.causal.nosmod.fast.anylen/sm80.m64n64w4s2)
cli_test(gen_help_example EXIT 0 ARGS gen --help
         STDOUT "fwd\\.bf16\\.d128\\.dense\\.causal\\.nosmod\\.fast\\.anylen\\[/sm80\\.m64n64w4s2\\]")
foreach(arch sm_80 sm_86 sm_87 sm_89 sm_90 sm_90a sm_100 sm_100a sm_103a sm_110a sm_120a sm_121a
             compute_121)
  cli_test(gen_help_example_${arch} EXIT 0 ARGS gen --arch ${arch} ${cli_gen_example}
           STDOUT "// tile: given$")
endforeach()
# A long bad variant is quoted once, in the parser's message.
string(REPEAT "x" 3000 cli_long_variant)
cli_test(gen_long_variant_quoted_once EXIT 2 ARGS gen ${cli_long_variant}
         STDERR "^sigattn: invalid variant: bad spec 'x+' in variant: expected [^']*$")
cli_test(gen_bad_dtype EXIT 2 ARGS gen fwd.bf17.d128.dense.causal.nosmod.fast.anylen
         STDERR "dtype")
cli_test(gen_bad_head_dim EXIT 2 ARGS gen fwd.bf16.d100.dense.causal.nosmod.fast.anylen
         STDERR "head")
cli_test(gen_bad_layout EXIT 2 ARGS gen fwd.bf16.d128.ragged.causal.nosmod.fast.anylen
         STDERR "layout")
cli_test(gen_bad_family EXIT 2 ARGS gen ${cli_spec}/sm70.m64n64w4s2 STDERR "family")
cli_test(gen_bad_tile EXIT 2 ARGS gen ${cli_spec}/sm80.m64x64 STDERR "tile")
cli_test(gen_rejected_tile EXIT 2 ARGS gen ${cli_spec}/sm80.m128n64w3s2 STDERR "rejected")
cli_test(gen_bad_arch EXIT 2 ARGS gen --arch sm_42 ${cli_spec} STDERR "sm_42")

cli_test(compile_sm80 EXIT 0 ARGS compile --arch sm_80 --spec ${cli_spec}
         STDOUT "${cli_summary_ok}" TIMEOUT 900)
cli_test(compile_sm90a EXIT 0 ARGS compile --arch sm_90a --spec ${cli_spec}
         STDOUT "${cli_summary_ok}" TIMEOUT 900)
# Blackwell (B200/B300: sm_100a/sm_103a; RTX 50 and RTX PRO: sm_120a) runs the sm80 family: every
# candidate of every default spec, forward and both backward kernels, compiles with no failure and
# no spill. Each takes minutes (sm_100a: 1116 kernels, sm_120a: 840 with its 99 KiB).
foreach(arch sm_100a sm_120a)
  cli_test(compile_default_space_${arch} EXIT 0 ARGS compile --arch ${arch}
           STDOUT "${cli_summary_ok}" NOT_STDOUT "(spills|failed) +(fwd|dkdv|dq)\\." TIMEOUT 3600)
endforeach()
cli_test(compile_json EXIT 0 ARGS compile --arch sm_80 --json --spec ${cli_spec}
         STDOUT "\"variant\"" STDERR "${cli_summary_ok}" JSON ARRAY TIMEOUT 900)
cli_test(compile_bad_arch EXIT 2 ARGS compile --arch sm_42 --spec ${cli_spec} STDERR "sm_42")
cli_test(compile_bad_spec EXIT 2 ARGS compile --arch sm_80 --spec fwd.bf16.d128 STDERR "--spec")
cli_test(compile_without_nvrtc EXIT 3 ARGS compile --arch sm_80 --spec ${cli_spec}
         STDERR "/nonexistent/libnvrtc.so"
         ENVIRONMENT SIGATTN_NVRTC_LIBRARY=/nonexistent/libnvrtc.so)

# A second process finds every kernel the first compiled and never needs NVRTC: it runs with
# NVRTC made unloadable. The database is deleted first so the first process really compiles.
set(cli_warm_db ${CMAKE_CURRENT_BINARY_DIR}/cli_db/warm.db)
add_test(NAME cli_cache_reset COMMAND ${CMAKE_COMMAND} -E rm -f ${cli_warm_db} ${cli_warm_db}-wal
                                      ${cli_warm_db}-shm)
set_tests_properties(cli_cache_reset PROPERTIES LABELS cpu FIXTURES_SETUP cli_cold_cache)
cli_test(compile_fills_cache EXIT 0 ARGS compile --arch sm_90a --db ${cli_warm_db} --spec ${cli_spec}
         STDOUT "compiled [1-9][0-9]*, from cache 0, failed 0$" TIMEOUT 900)
set_tests_properties(cli_compile_fills_cache PROPERTIES FIXTURES_REQUIRED cli_cold_cache
                                                        FIXTURES_SETUP cli_warm_cache)
cli_test(compile_second_process_without_nvrtc EXIT 0
         ARGS compile --arch sm_90a --db ${cli_warm_db} --spec ${cli_spec}
         STDOUT "cached .*compiled 0, from cache [1-9][0-9]*, failed 0$"
         ENVIRONMENT SIGATTN_NVRTC_LIBRARY=/nonexistent/libnvrtc.so)
set_tests_properties(cli_compile_second_process_without_nvrtc PROPERTIES
                     FIXTURES_REQUIRED cli_warm_cache)
cli_test(doctor_counts_served_binaries EXIT 0 ARGS doctor --db ${cli_warm_db}
         STDOUT "served in place of NVRTC [1-9][0-9]* times")
set_tests_properties(cli_doctor_counts_served_binaries PROPERTIES
                     FIXTURES_REQUIRED cli_warm_cache DEPENDS cli_compile_second_process_without_nvrtc)

# The db commands, each on its own database file under the build tree.
set(cli_db_dir ${CMAKE_CURRENT_BINARY_DIR}/cli_db)
set(cli_tuning ${CMAKE_CURRENT_SOURCE_DIR}/data/tuning)
cli_test(db_show_missing EXIT 0 ARGS --db ${cli_db_dir}/missing.db db show
         STDOUT "does not exist yet")
cli_test(db_import_valid EXIT 0 ARGS db import ${cli_tuning}/valid.json --db ${cli_db_dir}/import.db
         STDOUT "results kept: [01] .*candidates: 1$")
cli_test(db_import_shipped_h200 EXIT 0 ARGS db import ${PROJECT_SOURCE_DIR}/data/h200.json
         --db ${cli_db_dir}/shipped.db STDOUT "results kept: [0-9]+ .*not kept: [0-9]+ .*candidates: [1-9][0-9]*$")
cli_test(db_import_unknown_field EXIT 2
         ARGS --db ${cli_db_dir}/rejected.db db import ${cli_tuning}/unknown_field.json
         STDERR "results\\[0\\]\\.tile: unknown field 'block_k'")
cli_test(db_verify_not_a_database EXIT 1
         ARGS --db ${cli_tuning}/not_a_database.db db verify STDOUT "problem: .*1 problem$")
cli_test(db_export_missing EXIT 2 ARGS --db ${cli_db_dir}/missing.db db export STDERR "no database")
cli_test(db_merge_missing EXIT 2 ARGS --db ${cli_db_dir}/merged.db db merge ${cli_db_dir}/missing.db
         STDERR "db merge: no database at .*missing.db" ABSENT ${cli_db_dir}/merged.db)
cli_test(db_import_directory EXIT 2 ARGS --db ${cli_db_dir}/rejected.db db import ${cli_tuning}
         STDERR "db import: cannot read the tuning file .*: it is a directory")

# `sigattn tune`: bad input fails with a message and exit 2 before the database is created. Without
# a GPU (as in CI) it compiles the candidates for --arch into the binary cache and exits 0 saying
# so; with one it tunes the shape.
set(cli_tune_db ${cli_db_dir}/tune_rejected.db)
cli_test(tune_nothing_to_tune EXIT 2 ARGS tune --db ${cli_tune_db} STDERR "--preset, --shape"
         ABSENT ${cli_tune_db})
cli_test(tune_unknown_preset EXIT 2 ARGS tune --preset huge --db ${cli_tune_db}
         STDERR "unknown preset 'huge' \\(known: quick, paper, decode\\)" ABSENT ${cli_tune_db})
cli_test(tune_impossible_shape EXIT 2 ARGS tune --shape fwd.bf16.d100.L4096 --db ${cli_tune_db}
         STDERR "head_dim 100" ABSENT ${cli_tune_db})
cli_test(tune_bad_shape_field EXIT 2 ARGS tune --shape fwd.bf16.d64.L4096.mask --db ${cli_tune_db}
         STDERR "unknown field 'mask'" ABSENT ${cli_tune_db})
cli_test(tune_missing_shape_file EXIT 2 ARGS tune --shapes ${cli_db_dir}/none.json
         --db ${cli_tune_db} STDERR "cannot read the shape file" ABSENT ${cli_tune_db})
cli_test(tune_malformed_shape_file EXIT 2
         ARGS tune --shapes ${CMAKE_CURRENT_SOURCE_DIR}/data/tuning/unknown_field.json
         --db ${cli_tune_db} STDERR "shape file .*shapes.* array" ABSENT ${cli_tune_db})
cli_test(tune_shape_file_is_a_directory EXIT 2 ARGS tune --shapes ${cli_tuning} --db ${cli_tune_db}
         STDERR "--shapes: cannot read the shape file .*: it is a directory" ABSENT ${cli_tune_db})
cli_test(tune_shape_too_large_to_count EXIT 2 ARGS tune --shape fwd.bf16.d128.L16777216.b65535.h65535
         --db ${cli_tune_db} STDERR "more than 2\\^63 bytes" ABSENT ${cli_tune_db})
cli_test(tune_shape_with_zero_batch EXIT 2 ARGS tune --shape fwd.bf16.d128.L4096.b0
         --db ${cli_tune_db} STDERR "batch 0 must be at least 1" ABSENT ${cli_tune_db})
cli_test(tune_nan_timeout EXIT 2 ARGS tune --shape fwd.bf16.d64.L1024 --timeout nan
         --db ${cli_tune_db} STDERR "--timeout: 'nan' is not a finite number" ABSENT ${cli_tune_db})
cli_test(tune_negative_nan_timeout EXIT 2 ARGS tune --shape fwd.bf16.d64.L1024 --timeout -nan
         --db ${cli_tune_db} STDERR "not a finite number" ABSENT ${cli_tune_db})
cli_test(tune_unknown_strategy EXIT 2 ARGS tune --shape fwd.bf16.d64.L1024 --strategy fastest
         --db ${cli_tune_db} STDERR "unknown strategy 'fastest'" ABSENT ${cli_tune_db})
cli_test(tune_bad_shard EXIT 2 ARGS tune --shape fwd.bf16.d64.L1024 --shard 2/2
         --db ${cli_tune_db} STDERR "--shard 2/2" ABSENT ${cli_tune_db})
cli_test(tune_bad_device_list EXIT 2 ARGS tune --shape fwd.bf16.d64.L1024 --devices 0,zero
         --db ${cli_tune_db} STDERR "'zero' is not a non-negative integer" ABSENT ${cli_tune_db})
cli_test(tune_device_that_does_not_exist EXIT 2 ARGS tune --shape fwd.bf16.d64.L1024 --devices 7
         --db ${cli_tune_db} STDERR "--devices 7: (there is no CUDA device|device 7 does not exist)"
         ABSENT ${cli_tune_db})
set(cli_tune_compile_db ${cli_db_dir}/tune_compile.db)
add_test(NAME cli_tune_compile_reset COMMAND ${CMAKE_COMMAND} -E rm -f ${cli_tune_compile_db}
                                             ${cli_tune_compile_db}-wal ${cli_tune_compile_db}-shm)
set_tests_properties(cli_tune_compile_reset PROPERTIES LABELS cpu FIXTURES_SETUP cli_tune_cold)
cli_test(tune_without_gpu_compiles EXIT 0
         ARGS tune --shape fwd.fp16.d64.L1000.b2.h2 --arch sm_80 --db ${cli_tune_compile_db}
         STDOUT "no GPU to tune on .*compiled [1-9][0-9]* into the binary cache .*, found 0 there already, 0 failed|1 problems, 1 with a winner"
         TIMEOUT 900)
set_tests_properties(cli_tune_without_gpu_compiles PROPERTIES FIXTURES_REQUIRED cli_tune_cold
                                                              FIXTURES_SETUP cli_tune_warm)
# The second run finds every kernel in the cache and says so.
cli_test(tune_without_gpu_second_run_compiles_nothing EXIT 0
         ARGS tune --shape fwd.fp16.d64.L1000.b2.h2 --arch sm_80 --db ${cli_tune_compile_db}
         STDOUT "no GPU to tune on .*compiled 0 into the binary cache .*, found [1-9][0-9]* there already, 0 failed|1 problems, 1 with a winner"
         TIMEOUT 900)
set_tests_properties(cli_tune_without_gpu_second_run_compiles_nothing PROPERTIES
                     FIXTURES_REQUIRED cli_tune_warm)

# Stale tuning results (measured on kernel sources that have changed since; the fixture's hash is
# no kernel's): db show and doctor count them, db prune --tuning removes them, tune --stale
# re-tunes the problems it has a shape for and names the others.
set(cli_stale_db ${cli_db_dir}/stale.db)
add_test(NAME cli_stale_reset COMMAND ${CMAKE_COMMAND} -E rm -f ${cli_stale_db} ${cli_stale_db}-wal
                                      ${cli_stale_db}-shm)
set_tests_properties(cli_stale_reset PROPERTIES LABELS cpu FIXTURES_SETUP cli_stale_empty)
cli_test(stale_import EXIT 0 ARGS db import ${cli_tuning}/valid.json --db ${cli_stale_db}
         STDOUT "results kept: 1 ")
set_tests_properties(cli_stale_import PROPERTIES FIXTURES_REQUIRED cli_stale_empty
                                                 FIXTURES_SETUP cli_stale_rows)
cli_test(stale_db_show EXIT 0 ARGS db show --db ${cli_stale_db}
         STDOUT "tuning results: 1 \\(0 fresh, 1 stale\\).*stale \\(kernel sources changed since\\)")
cli_test(stale_doctor EXIT 0 ARGS doctor --db ${cli_stale_db}
         STDOUT "user database: .*tuning results: 1 \\(1 stale\\)")
cli_test(stale_prune EXIT 0 ARGS db prune --tuning --db ${cli_stale_db}
         STDOUT "removed 2 stale tuning rows")
cli_test(stale_db_show_after_prune EXIT 0 ARGS db show --db ${cli_stale_db}
         STDOUT "tuning results: 0 \\(0 fresh, 0 stale\\)")
set_tests_properties(cli_stale_db_show cli_stale_doctor PROPERTIES FIXTURES_REQUIRED cli_stale_rows)
set_tests_properties(cli_stale_prune PROPERTIES FIXTURES_REQUIRED cli_stale_rows
                     DEPENDS "cli_stale_db_show;cli_stale_doctor")
set_tests_properties(cli_stale_db_show_after_prune PROPERTIES FIXTURES_REQUIRED cli_stale_rows
                     DEPENDS cli_stale_prune)
cli_test(tune_stale_without_stale_results EXIT 0 ARGS tune --stale --db ${cli_db_dir}/none.db
         STDERR "no stale tuning results to re-tune" ABSENT ${cli_db_dir}/none.db
         ENVIRONMENT SIGATTN_DATA_DIR=${cli_db_dir}/no_shipped_data)
cli_test(tune_stale_names_problems_without_a_shape EXIT 0 ARGS tune --stale --db ${cli_db_dir}/none.db
         STDERR "stale result fwd.bf16.d64.varlen.nomask.nosmod.fast.anylen q 4096 k 4096 is not re-tuned: no tuning shape gives this problem.*no stale tuning results to re-tune"
         ENVIRONMENT SIGATTN_DATA_DIR=${CMAKE_CURRENT_SOURCE_DIR}/data/stale_shipped)
