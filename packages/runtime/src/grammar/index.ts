// Constrained decoding: grammars (JSON, JSON Schema, EBNF, structural tags) compiled by xgrammar
// against a tokenizer's vocabulary, masking each step's logits.
export { compileGrammar, applyBitmask, GrammarError, GRAMMAR_CACHE_SIZE } from './compile.ts'
export { unsupportedSchemaKeyword } from './schema-support.ts'
export type { GrammarSpec, CompiledGrammar, GrammarErrorCode } from './compile.ts'
export type {
  StructuralTagFormat, TagFormat, TriggeredTagsFormat, TagsWithSeparatorFormat, SequenceFormat, OrFormat,
  ConstStringFormat, JSONSchemaFormat, AnyTextFormat, GrammarFormat, RegexFormat
} from '@mlc-ai/web-xgrammar'
