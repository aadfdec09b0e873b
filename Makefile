# moelm build. `make` builds ./moelm; `make test` builds and runs every test; `make demo` trains a
# small model on the built-in corpus. Options: BLAS=0 (no OpenBLAS), SAN=1 (ASan+UBSan), DEBUG=1 (DEBUG=O1: -O1 -g),
# MPI=1 (mpicc, data and expert parallel training under mpirun; builds into build-mpi*).

CC      ?= gcc
BLAS    ?= 1
SAN     ?= 0
DEBUG   ?= 0
MPI     ?= 0

# -Wno-format-truncation: paths are built into fixed buffers whose inputs are length-checked at the CLI
CFLAGS  := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-format-truncation -fopenmp -Iinclude -Isrc -MMD -MP
LDLIBS  := -lm -fopenmp

ifeq ($(DEBUG),1)
  CFLAGS += -O0 -g
else ifeq ($(DEBUG),O1)
  # -O1 -g, no -march=native: scripts/valgrind.sh --quick (its runs take 2/3 of the CPU time of -O0)
  CFLAGS += -O1 -g
else
  # -fvect-cost-model=dynamic: GCC 12's -O2 default (very-cheap) skips every loop that needs a
  # remainder, i.e. nearly all of ops.c and the optimizer; -fno-math-errno lets sqrtf vectorise.
  # Neither reorders float arithmetic: results keep their bits.
  CFLAGS += -O2 -g -march=native -fno-math-errno -fvect-cost-model=dynamic
endif

BUILD := build
ifeq ($(SAN),1)
  CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDLIBS += -fsanitize=address,undefined
  BUILD := build-san
endif

# MPI=1: src/backend/comm.c is the one file that includes mpi.h and reads MOELM_MPI, so it alone is
# compiled with mpicc -DMOELM_MPI (into build-mpi*); every other object is the plain build's (build*,
# same compiler and flags) and only the links use mpicc: after `make`, `make MPI=1` is one file and
# two links (it was a second build of the whole tree, ~45 s of each `make test`).
MPICC   ?= mpicc
LINK_CC := $(CC)
ifeq ($(MPI),1)
  LINK_CC := $(MPICC)
  BUILD   := $(BUILD)-mpi
endif

ifeq ($(BLAS),1)
  BLAS_INC := /usr/include/x86_64-linux-gnu/openblas-openmp
  CFLAGS += -DMOELM_BLAS -I$(BLAS_INC)
  LDLIBS += -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas
else
  BUILD := $(BUILD)-noblas
endif

LIB_SRC  := $(sort $(shell find src -name '*.c' -not -path 'src/cli/*'))
CLI_SRC  := $(sort $(wildcard src/cli/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
# the objects that do not depend on MPI: the plain build's, also under MPI=1
OBJ_DIR  := $(subst -mpi,,$(BUILD))
COMM_OBJ := $(BUILD)/src/backend/comm.o
LIB_OBJ  := $(filter-out $(OBJ_DIR)/src/backend/comm.o,$(LIB_SRC:%.c=$(OBJ_DIR)/%.o)) $(COMM_OBJ)
CLI_OBJ  := $(CLI_SRC:%.c=$(OBJ_DIR)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
LIB      := $(BUILD)/libmoelm.a

ifeq ($(SAN)$(BLAS)$(MPI),010)
  BIN := moelm
else
  BIN := $(BUILD)/moelm
endif

.PHONY: all test demo clean deps check-deps tests bench-ops bench-q8 test-cli
all: $(BIN)

$(OBJ_DIR)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

ifeq ($(MPI),1)
$(COMM_OBJ): src/backend/comm.c
	@mkdir -p $(dir $@)
	$(MPICC) $(CFLAGS) -DMOELM_MPI -c $< -o $@
endif

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(CLI_OBJ) $(LIB)
	$(LINK_CC) $(CFLAGS) $(CLI_OBJ) $(LIB) -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(LIB) tests/test.h
	@mkdir -p $(dir $@)
	$(LINK_CC) $(CFLAGS) -Itests $< $(LIB) -o $@ $(LDLIBS)

# The binary the shell tests inject faults into: the CLI with src/train/hooks.c built with
# -DMOELM_TEST_HOOKS, linked ahead of the library (whose empty hooks.o the linker then leaves out).
# ./moelm itself carries no test hooks.
HOOKS_OBJ := $(OBJ_DIR)/hooks/src/train/hooks.o
TEST_CLI  := $(BUILD)/moelm-test
$(HOOKS_OBJ): src/train/hooks.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DMOELM_TEST_HOOKS -c $< -o $@
$(TEST_CLI): $(CLI_OBJ) $(HOOKS_OBJ) $(LIB)
	$(LINK_CC) $(CFLAGS) $(CLI_OBJ) $(HOOKS_OBJ) $(LIB) -o $@ $(LDLIBS)
test-cli: $(TEST_CLI)

tests: $(TEST_BIN) $(BIN) $(TEST_CLI) $(BUILD)/bench_ops $(BUILD)/bench_q8   # benches built (not run) so that they keep compiling

# bench/ops_bench.c: the dense step's kernels side by side (see the file)
bench-ops: $(BUILD)/bench_ops
$(BUILD)/bench_ops: bench/ops_bench.c $(LIB)
	$(LINK_CC) $(CFLAGS) $< $(LIB) -o $@ $(LDLIBS)

# bench/q8_bench.c: the Q8_0 matrix-vector product against the float and bf16 ones (see the file)
bench-q8: $(BUILD)/bench_q8
$(BUILD)/bench_q8: bench/q8_bench.c $(LIB)
	$(LINK_CC) $(CFLAGS) $< $(LIB) -o $@ $(LDLIBS)

# Installs the Debian packages moelm needs when they are missing (root on Debian 12).
deps:
	@sh scripts/deps.sh

test:
	@sh scripts/deps.sh test
	@$(MAKE) --no-print-directory tests
	@if command -v mpicc >/dev/null 2>&1; then $(MAKE) --no-print-directory MPI=1 all test-cli; fi   # tests/test_mpi*.sh
	@MOELM_BIN=$(abspath $(BIN)) MOELM_TEST_BIN=$(abspath $(TEST_CLI)) sh tests/run.sh $(TEST_BIN) $(wildcard tests/test_*.sh)

demo: deps
	@$(MAKE) --no-print-directory $(BIN)
	@sh scripts/demo.sh ./$(BIN)

clean:
	rm -rf build build-san build-noblas build-san-noblas build-mpi build-mpi-noblas build-san-mpi build-san-mpi-noblas moelm

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(HOOKS_OBJ:.o=.d)
