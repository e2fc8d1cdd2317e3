#!/usr/bin/env node
// The built CLI (npm run build); scripts/setup builds it.
import { main } from '../dist/cli/main.js';
await main(process.argv);
