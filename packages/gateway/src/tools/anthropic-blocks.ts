// Anthropic's streamed content blocks: text blocks opened as text arrives, each tool_use block as
// start (input {}), one input_json_delta with the whole input, stop.
import { anthropicToolUse } from './wire.ts'
import type { ParsedCall } from './types.ts'

export class AnthropicBlocks {
  readonly #write: (event: string, data: Record<string, unknown>) => void
  #index = -1
  #textOpen = false
  /** tool_use blocks sent, in order (the non-streamed message's content). */
  readonly content: unknown[] = []

  constructor (write: (event: string, data: Record<string, unknown>) => void) { this.#write = write }

  #event (type: string, data: Record<string, unknown>): void { this.#write(type, { type, ...data }) }

  /** Opens a text block now (without tools, the stream starts with one, as before). */
  openText (): void {
    if (this.#textOpen) return
    this.#index++
    this.#textOpen = true
    this.#event('content_block_start', { index: this.#index, content_block: { type: 'text', text: '' } })
  }

  text (text: string): void {
    if (text === '') return
    this.openText()
    this.#event('content_block_delta', { index: this.#index, delta: { type: 'text_delta', text } })
  }

  calls (calls: ParsedCall[]): void {
    this.#closeText()
    for (const c of calls) {
      const block = anthropicToolUse(c)
      this.content.push(block)
      this.#index++
      this.#event('content_block_start', { index: this.#index, content_block: { ...block, input: {} } })
      this.#event('content_block_delta', { index: this.#index, delta: { type: 'input_json_delta', partial_json: JSON.stringify(block.input) } })
      this.#event('content_block_stop', { index: this.#index })
    }
  }

  /** Closes what is open; a message with no block at all gets an empty text block. */
  end (): void {
    if (this.#index < 0) this.openText()
    this.#closeText()
  }

  #closeText (): void {
    if (!this.#textOpen) return
    this.#textOpen = false
    this.#event('content_block_stop', { index: this.#index })
  }
}
