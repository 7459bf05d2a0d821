// The layout of the DiT block's per-token ops (norm + modulate, gate + residual): x (batch, tokens,
// channels) contiguous, per-sample vectors (shift, scale, gate) (batch, channels) contiguous, all of
// one storage type; and the token chunks over which their backwards sum the per-sample gradients.
#pragma once

#include <cstdint>

#include "kernel_math.h"

namespace imm {

struct TokenShape {
  int64_t batch;
  int64_t tokens;
  int64_t channels;

  IMM_HD int64_t elements() const { return batch * tokens * channels; }
};

// Partial sums over tokens come in chunks of `chunk_tokens` consecutive tokens of one sample:
// scratch (batch, chunks, parts, channels) in the accumulation type, then summed in chunk order, so
// the reductions are deterministic whatever the thread count or launch order. At most
// kMaxChunkTokens per chunk (the CUDA backward keeps a chunk's row statistics in shared memory).
constexpr int64_t kMaxChunkTokens = 1024;
IMM_HD int64_t token_chunks(int64_t tokens, int64_t chunk_tokens) {
  return (tokens + chunk_tokens - 1) / chunk_tokens;
}

// Chunk `item` of the batch * token_chunks(...) chunks: sample b, its tokens [t0, t0 + rows), the first
// of them row first_row of x read as (batch * tokens, channels).
struct TokenChunk {
  int64_t b, t0, rows, first_row;
};

IMM_HD TokenChunk token_chunk(TokenShape shape, int64_t chunk_tokens, int64_t item) {
  const int64_t chunks = token_chunks(shape.tokens, chunk_tokens);
  const int64_t b = item / chunks, t0 = (item % chunks) * chunk_tokens;
  const int64_t rows = shape.tokens - t0 < chunk_tokens ? shape.tokens - t0 : chunk_tokens;
  return TokenChunk{b, t0, rows, b * shape.tokens + t0};
}

}  // namespace imm
