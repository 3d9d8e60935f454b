export * from './messages.ts'
export * from './commitment.ts'
export * from './verification.ts'
export * from './verify-messages.ts'
