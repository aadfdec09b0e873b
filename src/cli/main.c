/* main.c: `moelm <subcommand> [flags]`, the dispatcher. The only place (with the subcommands)
 * that prints errors and picks exit codes: 0 success, 1 failure, 2 bad usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "common/util.h"
#include "moelm.h"
#include "backend/runtime.h"
#include "cli/args.h"
#include "train/hooks.h"

int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_tokenizer(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_forward(int argc, char **argv);
int cmd_export(int argc, char **argv);

/* A subcommand whose file is not built in says so instead of failing to link. */
#define MISSING_COMMAND(fn, name) \
    __attribute__((weak)) int fn(int argc, char **argv) { \
        (void)argc; (void)argv; \
        fprintf(stderr, "moelm: the %s command is not built into this binary\n", name); \
        return 1; \
    }
MISSING_COMMAND(cmd_report, "report")
MISSING_COMMAND(cmd_bench, "bench")

static const char *const commands[] = {"train", "eval", "generate", "info", "report", "tokenizer", "export",
                                        "forward", "bench", NULL};

/* Grouped by what a user is doing; the examples use the name moelm was started by, so they run
 * as printed (./moelm from the repository root). */
static void usage(FILE *f, const char *prog) {
    fprintf(f,
            "moelm %s: Mixture-of-Experts and Switch Transformer language models\n\n"
            "usage: %s <command> [flags]      (%s <command> --help lists its flags, with examples)\n\n"
            "train and study a model:\n"
            "  train      train a model: a preset (--config) on a corpus (--data: built-in by default)\n"
            "  eval       token- and word-level perplexity and expert statistics of a checkpoint\n"
            "  generate   sample text from a checkpoint\n"
            "  info       a checkpoint's config, parameter counts and step\n"
            "  report     one self-contained HTML page of a run or several: curves, expert load, routing\n"
            "files and other tools:\n"
            "  tokenizer  train, encode and decode SentencePiece-compatible tokenizers\n"
            "  export     a mixtral / llama model as a Hugging Face directory or a GGUF file\n"
            "  forward    a model's outputs (logits, hidden states, router logits, losses) for given ids\n"
            "  bench      training and inference speed: tok/s, GFLOP/s, share of the machine's GEMM peak\n\n"
            "examples:\n"
            "  %s train --config demo --out runs/demo     # a small Switch LM on the built-in corpus (~1 min)\n"
            "  %s eval -m runs/demo                       # perplexity on its test split, expert load\n"
            "  %s generate -m runs/demo -p \"the old\" -n 20\n"
            "  %s report runs/demo                        # writes runs/demo/report.html\n"
            "  %s train --resume runs/demo --steps 800    # train on; Ctrl-C saves a checkpoint to resume from\n",
            MOELM_VERSION, prog, prog, prog, prog, prog, prog, prog);
}

/* The BLAS and OpenMP runtimes read their settings when they load, before main(): when
 * backend_runtime_env sets one, the program starts itself again, once, with the same arguments.
 * It executes the file /proc/self/exe resolves to, not the link itself, so that the process keeps
 * its name ("moelm" in ps and top, not "exe"); argv[0] is passed on unchanged. If the file cannot
 * be found or executed, the run goes on with the runtimes' defaults. */
static void restart_with_runtime_env(char **argv) {
    if (getenv("MOELM_REEXECED") || !backend_runtime_env()) return;
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0 || n >= (ssize_t)sizeof self - 1) return;
    self[n] = '\0';
    setenv("MOELM_REEXECED", "1", 1);
    execv(self, argv);   /* returns only on failure */
}

int main(int argc, char **argv) {
    restart_with_runtime_env(argv);
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout, argc ? argv[0] : "moelm");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("moelm %s\n", MOELM_VERSION);
        return 0;
    }
    if (argv[0] && argv[0][0]) cli_prog = argv[0];
    hook_begin();   /* test builds only: fault injection (src/train/hooks.h) */
    const char *cmd = argv[1];
    if (!strcmp(cmd, "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenizer")) return cmd_tokenizer(argc - 1, argv + 1);
    if (!strcmp(cmd, "report")) return cmd_report(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "forward")) return cmd_forward(argc - 1, argv + 1);
    if (!strcmp(cmd, "export")) return cmd_export(argc - 1, argv + 1);
    const char *near = str_nearest(cmd, commands);
    if (near)
        fprintf(stderr, "moelm: unknown command '%s' (did you mean %s? moelm --help lists them)\n", cmd, near);
    else
        fprintf(stderr, "moelm: unknown command '%s' (moelm --help lists them)\n", cmd);
    return 2;
}
