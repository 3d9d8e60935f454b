export * from './messages.ts'
export * from './commitment.ts'
