/*
 * test_cuda_pdl_ptx.c -- the PDL contract of kernels/cuda/pd_cuda_launch.h, checked in the PTX
 * of every kernel of the CUDA backend; no GPU needed, so it runs wherever CUDA code is built.
 *
 * Under programmatic dependent launch a kernel's blocks may start while the kernel before it
 * still runs, so each kernel must execute griddepcontrol.wait before it touches memory another
 * kernel reads or writes. A GPU test comparing results with and without PDL only catches a
 * missing wait if the race happens to show; this one reads the code. For each .entry of the PTX
 * files (argv[1]: a ':'-separated list, made by the pd_cuda_ptx object library for sm_90):
 *   - it has a griddepcontrol.wait, and a griddepcontrol.launch_dependents after it;
 *   - before the wait there is no memory access but parameter loads and L2 prefetches (no ld.*
 *     other than ld.param, no st.*, atom, red, cp.*, tex, no call), no ret or exit, and every
 *     branch goes to a label that is also before the wait: no path reaches an access without
 *     passing the wait.
 * It also requires a minimum number of entries, so a PTX file that failed to parse cannot pass.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pd_check.h"

#define MAX_LINES  400000
#define MAX_LABELS 4096

static const char *ptx_list;
static char why[512]; /* the first violation found */

#define VIOLATION(...) (snprintf(why, sizeof why, __VA_ARGS__), -1)

/* The file's lines (NUL-terminated, in one malloc'd buffer; the caller frees both the returned
 * array and *buf_out); NULL if the file cannot be read. */
static char **read_lines(const char *path, int *n_lines, char **buf_out) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)size + 1);
  if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
    fclose(f);
    free(buf);
    return NULL;
  }
  fclose(f);
  buf[size] = 0;
  char **lines = malloc(sizeof(char *) * MAX_LINES);
  int n = 0;
  for (char *p = buf; *p && n < MAX_LINES;) {
    lines[n++] = p;
    char *nl = strchr(p, '\n');
    if (!nl) break;
    *nl = 0;
    p = nl + 1;
  }
  *n_lines = n;
  *buf_out = buf;
  return lines;
}

/* The opcode of an instruction line (after a predicate "@%p" or "@!%p"), copied into op; 0 when
 * the line is not an instruction (blank, comment, directive, brace, label). */
static int opcode(const char *line, char *op, size_t cap) {
  while (*line == ' ' || *line == '\t') line++;
  if (!*line || *line == '/' || *line == '.' || *line == '{' || *line == '}' || *line == ')' ||
      *line == '(')
    return 0;
  const char *colon = strchr(line, ':');
  const char *space = strpbrk(line, " \t;");
  if (colon && (!space || colon < space)) return 0; /* a label */
  if (*line == '@') {
    line = strpbrk(line, " \t");
    if (!line) return 0;
    while (*line == ' ' || *line == '\t') line++;
  }
  size_t n = strcspn(line, " \t;");
  if (n >= cap) n = cap - 1;
  memcpy(op, line, n);
  op[n] = 0;
  return 1;
}

/* The label a line defines ("$L__BB0_3:"), copied into out; 0 if none. */
static int label_of(const char *line, char *out, size_t cap) {
  while (*line == ' ' || *line == '\t') line++;
  size_t n = strcspn(line, ": \t;");
  if (!n || line[n] != ':' || *line == '/' || *line == '.') return 0;
  if (n >= cap) n = cap - 1;
  memcpy(out, line, n);
  out[n] = 0;
  return 1;
}

/* The branch target of a "bra" line. */
static void branch_target(const char *line, char *out, size_t cap) {
  const char *end = strrchr(line, ';');
  const char *p = end;
  while (p > line && p[-1] != ' ' && p[-1] != '\t') p--;
  size_t n = (size_t)(end - p);
  if (n >= cap) n = cap - 1;
  memcpy(out, p, n);
  out[n] = 0;
}

static int is_access_or_exit(const char *op) {
  if (!strncmp(op, "ld.", 3)) return strncmp(op, "ld.param", 8) != 0;
  return !strncmp(op, "st.", 3) || !strncmp(op, "atom", 4) || !strncmp(op, "red.", 4) ||
         !strncmp(op, "cp.", 3) || !strncmp(op, "tex", 3) || !strncmp(op, "suld", 4) ||
         !strncmp(op, "sust", 4) || !strncmp(op, "sured", 5) || !strcmp(op, "call") ||
         !strncmp(op, "call.", 5) || !strcmp(op, "ret") || !strcmp(op, "exit") ||
         !strncmp(op, "mbarrier", 8) || !strncmp(op, "multimem", 8);
}

/* Checks the entry in lines [b, e): 1 if it keeps the contract, else -1 with the reason in why. */
static int check_entry(char **lines, int b, int e, const char *path) {
  char name[200] = "";
  sscanf(strstr(lines[b], ".entry") + 6, " %199[^( ]", name);
  int wait = -1, trigger = -1;
  char op[64];
  for (int i = b; i < e; i++) {
    if (!opcode(lines[i], op, sizeof op)) continue;
    if (wait < 0 && !strcmp(op, "griddepcontrol.wait")) wait = i;
    if (wait >= 0 && !strcmp(op, "griddepcontrol.launch_dependents")) {
      trigger = i;
      break;
    }
  }
  if (wait < 0) return VIOLATION("%s: %s has no griddepcontrol.wait", path, name);
  if (trigger < 0)
    return VIOLATION("%s: %s has no griddepcontrol.launch_dependents after its wait", path, name);
  static char labels[MAX_LABELS][64];
  int n_labels = 0;
  for (int i = b; i < wait; i++)
    if (n_labels < MAX_LABELS && label_of(lines[i], labels[n_labels], sizeof labels[0])) n_labels++;
  for (int i = b; i < wait; i++) {
    if (!opcode(lines[i], op, sizeof op)) continue;
    if (is_access_or_exit(op))
      return VIOLATION("%s: %s: '%s' before griddepcontrol.wait (line %d)", path, name, op, i + 1);
    if (!strncmp(op, "bra", 3)) {
      char target[64];
      branch_target(lines[i], target, sizeof target);
      int found = 0;
      for (int k = 0; k < n_labels && !found; k++) found = !strcmp(labels[k], target);
      if (!found)
        return VIOLATION("%s: %s: a branch to %s skips griddepcontrol.wait (line %d)", path, name,
                         target, i + 1);
    }
  }
  return 1;
}

/* The number of kernels in the PTX file at path, all keeping the contract; -1 at the first that
 * does not (or if the file cannot be read), with the reason in why. */
static int check_file(const char *path) {
  int n_lines;
  char *buf;
  char **lines = read_lines(path, &n_lines, &buf);
  if (!lines) return VIOLATION("cannot read %s", path);
  int checked = 0, start = -1;
  for (int i = 0; i <= n_lines; i++) {
    const int boundary = i == n_lines || !strncmp(lines[i], ".visible .entry", 15) ||
                         !strncmp(lines[i], ".entry", 6) ||
                         !strncmp(lines[i], ".visible .func", 14) ||
                         !strncmp(lines[i], ".func", 5) || !strncmp(lines[i], ".weak .func", 11);
    if (!boundary) continue;
    if (start >= 0 && check_entry(lines, start, i, path) < 0) {
      checked = -1;
      break;
    }
    if (start >= 0) checked++;
    start = i < n_lines && strstr(lines[i], ".entry") ? i : -1;
  }
  free(lines), free(buf);
  return checked;
}

START_TEST(every_kernel_waits_before_its_first_access) {
  ck_assert_msg(ptx_list && *ptx_list, "no PTX files given");
  char *list = strdup(ptx_list);
  int files = 0, entries = 0;
  for (char *save = NULL, *p = strtok_r(list, ":", &save); p; p = strtok_r(NULL, ":", &save)) {
    const int n = check_file(p);
    ck_assert_msg(n >= 0, "%s", why);
    printf("%s: %d kernels checked\n", p, n);
    ck_assert_msg(n > 0, "%s: no kernel found", p);
    files++, entries += n;
  }
  free(list);
  /* the attention, ops and block-copy kernels: 8 + 10 + 1 templates, 100+ instantiations */
  ck_assert_int_eq(files, 3);
  ck_assert_msg(entries >= 100, "only %d kernels found", entries);
}
END_TEST

/* The checker itself: a wait after an access, a branch past the wait and a missing trigger are
 * caught (the check can fail). */
START_TEST(the_check_catches_violations) {
  static const char *bad[3] = {
      ".visible .entry k(\n)\n{\n\tld.param.u64 %rd1, [p];\n\tld.global.f32 %f1, [%rd1];\n"
      "\tgriddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;\n\tret;\n}\n",
      ".visible .entry k(\n)\n{\n\t@%p1 bra $L__BB0_2;\n\tgriddepcontrol.wait;\n"
      "\tgriddepcontrol.launch_dependents;\n$L__BB0_2:\n\tst.global.f32 [%rd1], %f1;\n\tret;\n}\n",
      ".visible .entry k(\n)\n{\n\tgriddepcontrol.wait;\n\tret;\n}\n"};
  for (int i = 0; i < 3; i++) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/pd_pdl_bad_%d_%d.ptx", (int)getpid(), i);
    FILE *f = fopen(path, "w");
    ck_assert(f != NULL);
    fputs(bad[i], f);
    fclose(f);
    why[0] = 0;
    const int n = check_file(path);
    unlink(path);
    ck_assert_msg(n < 0, "violation %d not caught", i);
    printf("caught: %s\n", why);
  }
  /* and a clean one passes: a prefetch loop before the wait, a branch back within it */
  static const char *good = ".visible .entry k(\n)\n{\n\tld.param.u64 %rd1, [p];\n$L__BB0_1:\n"
                            "\tprefetch.global.L2 [%rd1];\n\t@%p1 bra $L__BB0_1;\n"
                            "\tgriddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;\n"
                            "\tld.global.f32 %f1, [%rd1];\n\tret;\n}\n";
  char path[64];
  snprintf(path, sizeof path, "/tmp/pd_pdl_good_%d.ptx", (int)getpid());
  FILE *f = fopen(path, "w");
  ck_assert(f != NULL);
  fputs(good, f);
  fclose(f);
  ck_assert_int_eq(check_file(path), 1);
  unlink(path);
}
END_TEST

int main(int argc, char **argv) {
  ptx_list = argc > 1 ? argv[1] : NULL;
  Suite *s = suite_create("cuda_pdl_ptx");
  TCase *tc = tcase_create("ptx");
  tcase_add_test(tc, every_kernel_waits_before_its_first_access);
  tcase_add_test(tc, the_check_catches_violations);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 0);
}
