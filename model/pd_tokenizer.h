/*
 * pd_tokenizer.h -- byte-level BPE (GGUF tokenizer.ggml.model = "gpt2"), built from the GGUF's
 * token list, merges and token types.
 *
 * Encoding: special tokens (control and user-defined types) are cut out of the text first when
 * parse_special is set; each remaining stretch is split by the pre-tokenizer named in
 * tokenizer.ggml.pre ("smollm": every digit alone, then the GPT-2 pattern; "gpt2"/"default":
 * the GPT-2 pattern; "llama3"/"llama-v3"/"llama-bpe": Llama 3's pattern, numbers in pieces of up
 * to 3 digits; "qwen2": the same with every digit alone), each piece's bytes are mapped to GPT-2's byte-level alphabet, and merges
 * are applied lowest rank first. Decoding maps a token's characters back to bytes.
 *
 * The tokenizer copies what it needs from the GGUF: it does not depend on the pd_gguf after
 * pd_tokenizer_from_gguf returns. It is immutable afterwards, so threads may share it.
 */
#ifndef PD_TOKENIZER_H
#define PD_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "pd_gguf.h"

typedef struct pd_tokenizer pd_tokenizer;

int pd_tokenizer_from_gguf(const pd_gguf *g, pd_tokenizer **out, char *err, size_t errlen);
void pd_tokenizer_free(pd_tokenizer *t);

int32_t pd_tokenizer_n_vocab(const pd_tokenizer *t);
int32_t pd_tokenizer_bos(const pd_tokenizer *t); /* -1 if none */
int32_t pd_tokenizer_eos(const pd_tokenizer *t); /* -1 if none */
/* End of generation: eos, eot, <|im_end|>, <|endoftext|>, <|eot_id|>, <|eom_id|>. */
int pd_tokenizer_is_eog(const pd_tokenizer *t, int32_t tok);
/* Control or user-defined token (rendered as nothing by the detokenizer). */
int pd_tokenizer_is_special(const pd_tokenizer *t, int32_t tok);
/* Finds a token by its exact text; -1 if absent. */
int32_t pd_tokenizer_find(const pd_tokenizer *t, const char *text);

/* The pieces the pre-tokenizer cuts text[0..len) into (special tokens not parsed): ends[k] is the
 * byte offset where piece k ends. Writes at most cap ends; *n_out gets the count (PD_EFULL if it
 * is over cap). For tests and tools; pd_tokenize runs BPE on exactly these pieces. */
int pd_tokenizer_split(const pd_tokenizer *t, const char *text, size_t len, size_t *ends,
                       size_t cap, size_t *n_out);

/* Writes up to cap ids into out and the full count into *n_out. PD_EFULL if cap was too small. */
int pd_tokenize(const pd_tokenizer *t, const char *text, size_t len, int parse_special,
                int32_t *out, size_t cap, size_t *n_out);

/* A prompt's ids: pd_tokenize with special tokens parsed, after the bos token when the model's
 * tokenizer.ggml.add_bos_token asks for it (Llama 3) and the text does not open with it already.
 * The same contract for out, cap and *n_out. */
int pd_tokenize_prompt(const pd_tokenizer *t, const char *text, size_t len, int32_t *out,
                       size_t cap, size_t *n_out);

/* The bytes of one token (special tokens: their text). Borrowed from t. PD_ERANGE for a bad id. */
int pd_token_piece(const pd_tokenizer *t, int32_t tok, const char **bytes, size_t *len);

#endif /* PD_TOKENIZER_H */
