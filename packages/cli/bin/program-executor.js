#!/usr/bin/env node
// The CLI is TypeScript run through tsx, so job libraries may be TypeScript too.
import { register } from "tsx/esm/api"

register()
await import("../src/main.ts")
